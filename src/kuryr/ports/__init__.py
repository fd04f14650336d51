"""A container's port lifecycle, shared by every entry point (CNI daemon in standalone mode,
the Docker driver, tools): create a Neutron port bound to this host, plug it, wait for ACTIVE;
and the reverse. ``lifecycle`` holds it; pools come later in ``kuryr.pools``.
"""
