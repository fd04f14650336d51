"""The ``kuryr`` command: operators' tool and the entry point of every component."""
