"""A host table of the plan, resolved into an SshTarget: ssh_config entries, paths relative to the plan."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko

from decom.errors import UserError
from decom.remote.ssh import SshTarget


def _ssh_config(path: Path, name: str) -> dict[str, Any]:
    try:
        return dict(paramiko.SSHConfig.from_path(str(path)).lookup(name))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read ssh_config {path} ({type(exc).__name__})") from None
    except (paramiko.ConfigParseError, ValueError) as exc:
        raise UserError(f"ssh_config {path}: {exc}") from None


def ssh_target(host: Any, options: Any, resolve: Callable[[str], Path], *, user: str | None = None,
               key_file: str | None = None) -> SshTarget:
    """The host as decom connects to it. `user`/`key_file` override the host's (to try another account)."""
    config = _ssh_config(resolve(options.ssh_config), host.name) if options.ssh_config else {}
    login = user or host.user or config.get("user")
    if not login:
        raise UserError(f"host {host.name}: no user (set user, or User in the ssh_config entry)")
    key: Path | None = resolve(key_file or host.key_file) if (key_file or host.key_file) else None
    agent = bool(host.agent) and key_file is None
    if key is None and not agent:
        identities = [Path(p).expanduser() for p in config.get("identityfile", [])]
        key = next((p for p in identities if p.is_file()), None)
        agent = key is None
    port = host.port or int(config.get("port", 22))
    return SshTarget(
        name=host.name, address=host.address or str(config.get("hostname") or host.name), port=port, user=login,
        key_file=key, agent=agent, known_hosts=resolve(options.known_hosts) if options.known_hosts else None,
        fingerprint=host.host_key_fingerprint, key_alias=config.get("hostkeyalias"), sudo=bool(host.sudo),
        connect_timeout=float(options.connect_timeout))


def host_address(host: Any, options: Any, resolve: Callable[[str], Path]) -> str:
    """Where the host is, for checks from the decom host (ports, HTTP): address, else ssh_config HostName."""
    if host.address:
        return str(host.address)
    config = _ssh_config(resolve(options.ssh_config), host.name) if options.ssh_config else {}
    return str(config.get("hostname") or host.name)
