"""Octavia for kuryr: the only importer of openstacksdk's load-balancer proxy.

``client.Octavia`` is the async facade (load balancers, listeners, pools, members in one batch
update, providers); ``resources`` the dataclasses it returns; ``failures`` maps every Octavia and
transport failure into ``kuryr.errors``. It takes an SDK connection made elsewhere (by
``kuryr.neutron.connecting``: one set of credentials for both) and never imports
``kuryr.neutron``: the two adapters are independent.
"""
