"""The local cloud: a real single-node Neutron (ML2/OVN) and Octavia (OVN provider) with OVN,
Open vSwitch (userspace datapath) and MariaDB on loopback, all state in one directory.

Modules: ``layout`` (paths), ``commands`` (running a step, its log, its error),
``installing`` (apt packages, Neutron's and Octavia's virtualenvs), ``rendering``
(configuration files), ``services`` (daemons by pidfile), ``provisioning`` (one-time database
and switch setup), ``probing`` (waiting for sockets and the APIs), ``external`` (the external
network of floating IPs and the outside namespace), ``lifecycle`` (up, down, status, env).
"""

from __future__ import annotations

from kuryr import errors


class CloudError(errors.KuryrError):
    """A step of bringing the local cloud up or down failed; the message names the step,
    the log to read and its last lines."""
