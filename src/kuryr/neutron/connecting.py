"""The SDK connection to Neutron (and, with the same credentials, to Octavia: the controller
hands a connection made here to ``kuryr.octavia``), from ``[neutron]``: a clouds.yaml cloud or
explicit auth options (``auth_type = none`` with an endpoint for a Neutron without Keystone)."""

from __future__ import annotations

from typing import Any

import openstack.config
import openstack.connection
from openstack import exceptions as sdk_exceptions

from kuryr import errors, settings


def connect(config: settings.NeutronSettings, *, load_balancer_endpoint: str | None = None
            ) -> openstack.connection.Connection:
    """An SDK connection from ``[neutron]``; ``load_balancer_endpoint`` overrides Octavia's
    endpoint (``[octavia_defaults] endpoint_override``; a clouds.yaml cloud can name it as
    ``load_balancer_endpoint_override``). Raises ConfigError (message without secrets)."""
    if not config.is_configured():
        raise errors.ConfigError(
            "Neutron is not configured: set [neutron] cloud = <clouds.yaml entry> or auth_url "
            "(or run 'kuryr cloud up' for a local Neutron and use its kuryr.conf)")
    try:
        if config.cloud:
            loader = openstack.config.OpenStackConfig(
                config_files=[config.clouds_yaml] if config.clouds_yaml else None)
            extra: dict[str, Any] = ({"load_balancer_endpoint_override": load_balancer_endpoint}
                     if load_balancer_endpoint else {})
            region = loader.get_one(cloud=config.cloud, region_name=config.region_name,
                                    api_timeout=config.timeout, **extra)
            return openstack.connection.Connection(config=region)
        auth_type = config.auth_type or ("password" if config.username else "none")
        options: dict[str, Any] = {
            "auth_type": auth_type,
            "auth_url": config.auth_url,
            "region_name": config.region_name,
            "network_endpoint_override": config.endpoint_override,
            "load_balancer_endpoint_override": load_balancer_endpoint,
            "api_timeout": config.timeout,
        }
        if auth_type != "none":
            options.update({
                "username": config.username,
                "password": config.password,
                "project_name": config.project_name,
                "project_id": config.project_id,
                "user_domain_name": config.user_domain_name,
                "project_domain_name": config.project_domain_name,
            })
        return openstack.connection.Connection(
            **{k: v for k, v in options.items() if v is not None})
    except (sdk_exceptions.SDKException, TypeError) as e:
        # The SDK's config errors name the cloud or option, never the password.
        raise errors.ConfigError(f"cannot set up the Neutron client: {e}") from e
