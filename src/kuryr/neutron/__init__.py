"""Neutron for kuryr: the only importer of openstacksdk.

``client.Neutron`` is the async facade; ``resources`` the dataclasses it returns; ``failures``
maps every Neutron and transport failure; ``tagging`` names the owner tags.
"""
