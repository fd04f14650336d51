"""The Kubernetes adapter: the only importer of kubernetes_asyncio. ``api`` talks to the API
server (objects as plain dicts, failures mapped into kuryr's error family); ``watching`` keeps
a listed-and-watched cache of one resource; ``resources`` names the resources kuryr uses."""
