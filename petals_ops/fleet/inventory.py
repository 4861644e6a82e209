"""The fleet's inventory: a YAML file validated by pydantic (hosts, GPUs, the server spec and overrides).

Layout (see ``deploy/petals-ops.example.yaml``)::

    ssh_config: ~/.ssh/config          # optional; where host aliases are resolved
    known_hosts: ~/.ssh/known_hosts    # optional; host keys are checked against it
    server: {...}                      # the server spec every host gets (defaults below)
    hosts:
      a10-1: {address: 203.0.113.7, user: ubuntu, gpus: 1, server: {block_indices: ["0:14"]}}

Errors name the field path and its line in the file. Nothing here imports more than pydantic and PyYAML.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from petals_ops.util.errors import InputError, looks_secret
from petals_ops.lab.target import is_peer_multiaddr

DEFAULT_INVENTORY = "petals-ops.yaml"
# The official image, pinned: ':main' is rebuilt from every push, so a fleet must name a tag or a digest.
DEFAULT_IMAGE = "learningathome/petals:2.2.0"
OFFICIAL_COMMAND = ["python", "-m", "petals.cli.run_server"]
A10_MEMORY_BYTES = 24_146_608_128  # what NVML reports for an NVIDIA A10 (22.49 GiB)
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
BLOCK_RANGE_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
# petals run_server flags that take the HF token
TOKEN_FLAGS = ("--token", "--use_auth_token", "--use-auth-token")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TokenSource(_Strict):
    """Where the Hugging Face token comes from: an environment variable or a file; never argv or YAML."""

    env: str | None = None
    file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_the_token(cls, data):
        """``hf_token: hf_...`` puts the secret in the file: refuse it without echoing it."""
        if isinstance(data, str):
            raise ValueError("must say where the token is ({env: VAR} or {file: PATH}), not hold the token")
        return data

    @model_validator(mode="after")
    def _one(self) -> "TokenSource":
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env: VAR or file: PATH")
        if self.env is not None and looks_secret(self.env):
            raise ValueError("env: takes the name of an environment variable holding the token, "
                             "not the token")
        return self

    def describe(self) -> str:
        return f"env {self.env}" if self.env else f"file {self.file}"

    def read(self) -> str:
        if self.env:
            value = os.environ.get(self.env)
            if not value:
                raise InputError(f"hf_token: environment variable {self.env} is empty or unset",
                                 fix=f"export {self.env}=... before running petals-ops")
            return value.strip()
        path = Path(self.file).expanduser()
        try:
            value = path.read_text().strip()
        except OSError as e:
            raise InputError(f"hf_token: cannot read token file {path} ({e.strerror})",
                             fix="check the path") from e
        if not value:
            raise InputError(f"hf_token: token file {path} is empty", fix="write the token into it")
        return value


class ServerSpec(_Strict):
    """What each server container runs. Every field can be overridden per host under ``hosts.NAME.server``."""

    image: str = DEFAULT_IMAGE
    command: list[str] = Field(default_factory=lambda: list(OFFICIAL_COMMAND))
    model: str = "bigscience/bloom"
    dht_prefix: str | None = None
    device: Literal["cuda", "cpu"] = "cuda"
    torch_dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = None
    quant_type: Literal["none", "int8", "nf4"] | None = None
    num_blocks: int | None = Field(default=None, ge=1)
    block_indices: list[str] | None = None  # one "start:end" per server on the host (per GPU)
    attn_cache_tokens: int | None = Field(default=None, ge=1)
    inference_max_length: int | None = Field(default=None, ge=1)
    max_disk_space: str | None = None
    throughput: str | float | None = None
    port: int = Field(default=31330, ge=1, le=65535)  # server i on a host uses port + i
    listen_address: str = "0.0.0.0"
    public_ip: str | None = None  # announced address (use when behind NAT or listening on 0.0.0.0)
    public_name: str | None = None
    initial_peers: list[str] = Field(default_factory=list)
    new_swarm: bool = False
    identity_dir: str = ".petals-ops/identity"  # on the host; one identity file per server
    cache_volume: str = "petals-cache"
    cache_mount: str = "/cache"
    volumes: list[str] = Field(default_factory=list)  # extra binds "SRC:DST[:ro]"
    environment: dict[str, str] = Field(default_factory=dict)  # non-secret environment
    extra_args: list[str] = Field(default_factory=list)
    hf_token: TokenSource | None = None
    restart_policy: Literal["unless-stopped", "always", "on-failure", "no"] = "unless-stopped"
    container_prefix: str = "petals-server"

    @field_validator("*")
    @classmethod
    def _no_secrets(cls, value, info):
        """A token belongs under hf_token (read at use from a variable or a file). Anywhere else plan would
        print it, argv would show it to the host's users, or public_name would announce it to the swarm."""
        if info.field_name != "hf_token" and any(looks_secret(v) for v in _strings(value)):
            raise ValueError("holds what looks like a Hugging Face token (hf_...); "
                             "give the token only as hf_token: {env: VAR} or {file: PATH}")
        return value

    @field_validator("block_indices")
    @classmethod
    def _ranges(cls, value):
        if value is None:
            return value
        normalised = []
        for r in value:
            m = BLOCK_RANGE_RE.match(r)
            if not m or int(m.group(1)) >= int(m.group(2)):
                raise ValueError(f"block range {r!r} is not start:end with start < end (e.g. 0:14)")
            # " 0 : 14" -> "0:14", as the DHT shows it
            normalised.append(f"{int(m.group(1))}:{int(m.group(2))}")
        return normalised

    @field_validator("command", "extra_args")
    @classmethod
    def _no_token_args(cls, value):
        for a in value:
            flag = a.split("=", 1)[0]
            if flag in TOKEN_FLAGS or a.startswith("hf_"):
                raise ValueError(f"{'a token' if a.startswith('hf_') else flag} must not be on the "
                                 "command line (other users of the host can read it); "
                                 "use hf_token: {env: VAR}")
        return value

    @field_validator("initial_peers")
    @classmethod
    def _peers(cls, value):
        for p in value:
            if not is_peer_multiaddr(p):
                raise ValueError(f"initial peer {p!r} is not a multiaddr /ip4/HOST/tcp/PORT/p2p/PEER_ID")
        return value

    @field_validator("listen_address", "public_ip")
    @classmethod
    def _ip(cls, value):
        if value is not None:
            ipaddress.ip_address(value)
        return value

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, value):
        for v in value:
            parts = v.split(":")
            if (len(parts) not in (2, 3) or not all(parts[:2])
                    or (len(parts) == 3 and parts[2] not in ("ro", "rw"))):
                raise ValueError(f"volume {v!r} is not SRC:DST or SRC:DST:ro")
        return value

    @field_validator("environment")
    @classmethod
    def _env(cls, value):
        for k in value:
            if "TOKEN" in k.upper() or "SECRET" in k.upper():
                raise ValueError(f"environment variable {k} looks like a secret; "
                                 "use hf_token: {env: VAR} instead")
        return value

    @field_validator("container_prefix")
    @classmethod
    def _prefix(cls, value):
        if not HOST_NAME_RE.match(value):
            raise ValueError("container_prefix may hold letters, digits, '.', '_' and '-'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ServerSpec":
        if self.num_blocks is not None and self.block_indices is not None:
            raise ValueError("num_blocks and block_indices exclude each other (Petals takes one of them)")
        if self.new_swarm and self.initial_peers:
            raise ValueError("new_swarm and initial_peers exclude each other")
        if not self.command:
            raise ValueError("command is empty")
        return self


def _strings(value) -> list[str]:
    """The strings in a field's value (itself, a list's items, a dict's keys and values)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    if isinstance(value, dict):
        return [v for kv in value.items() for v in kv if isinstance(v, str)]
    return []


# Per-host overrides: the same fields as ServerSpec, all optional (checked combined with the defaults).
ServerOverrides = create_model(
    "ServerOverrides",
    __base__=_Strict,
    **{name: (f.annotation | None, None) for name, f in ServerSpec.model_fields.items()},
)


class HostSpec(_Strict):
    """One rented machine. ``address`` defaults to the host's name, which may be an ssh-config alias."""

    address: str | None = None
    user: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    key: str | None = None  # private key file (never the key itself)
    sudo: bool = False  # use sudo for docker/provision commands
    gpus: int = Field(default=1, ge=0, le=16)
    gpu_memory_bytes: int = Field(default=A10_MEMORY_BYTES, ge=1)
    server: ServerOverrides = Field(default_factory=ServerOverrides)  # type: ignore[valid-type]


class Inventory(_Strict):
    ssh_config: str | None = None
    known_hosts: str | None = None
    server: ServerSpec = Field(default_factory=ServerSpec)
    hosts: dict[str, HostSpec] = Field(default_factory=dict)
    source: str | None = Field(default=None, exclude=True)

    @field_validator("hosts")
    @classmethod
    def _names(cls, value):
        for name in value:
            if not HOST_NAME_RE.match(name):
                raise ValueError(f"host name {name!r} may hold letters, digits, '.', '_' and '-' only")
        return value

    def server_for(self, host: str, *, _lines: dict | None = None) -> ServerSpec:
        """The effective server spec of ``host``: defaults, then its overrides (validated together)."""
        base = self.server.model_dump(exclude_unset=False)
        spec = self.hosts.get(host)
        overrides = spec.server.model_dump(exclude_unset=True) if spec is not None else {}
        base.update(overrides)
        try:
            return ServerSpec.model_validate(base)
        except ValidationError as e:
            field = e.errors()[0]["loc"][:1]
            prefix = ("hosts", host, "server") if field and field[0] in overrides else ("server",)
            raise InputError(
                f"inventory {self.source or '(none)'}: {_first_error(e, _lines, prefix)}",
                fix="see deploy/petals-ops.example.yaml for the fields",
            ) from None

    def host(self, name: str) -> HostSpec:
        return self.hosts.get(name) or HostSpec()


def _first_error(e: ValidationError, lines: dict | None = None, prefix: tuple = ()) -> str:
    err = e.errors()[0]
    loc = prefix + tuple(p for p in err["loc"] if p not in ("function-after",))
    path = ".".join(str(p) for p in loc) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    where = ""
    if lines:
        for n in range(len(loc), 0, -1):
            if loc[:n] in lines:
                where = f" (line {lines[loc[:n]]})"
                break
    got = err.get("input")
    shown = ("" if err["type"] in ("extra_forbidden", "missing") or isinstance(got, (dict, list))
             else f", got {got!r}")
    return f"{path}{where}: {msg}{shown}"


def _line_map(root) -> dict[tuple, int]:
    """Map each YAML key path of the composed ``root`` node to its 1-based line, for error messages."""
    import yaml

    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode):  # a complex key (? [a, b]) names no field
                    continue
                key = (*path, k.value)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[(*path, i)] = v.start_mark.line + 1
                walk(v, (*path, i))

    if root is not None:
        walk(root, ())
    return lines


# What an inventory may expand to. Aliases are shared by reference, so a few lines can stand for
# billions of values (a "billion laughs" alias bomb) that validation and the line map would then walk:
# an inventory of 1,000 hosts is about 30,000 values.
MAX_YAML_VALUES = 200_000
MAX_YAML_DEPTH = 64


def _yaml_children(node) -> list:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_yaml_size(root, path: Path) -> None:
    """Refuse a composed YAML document whose expansion (aliases counted each time they are used) exceeds
    MAX_YAML_VALUES values or MAX_YAML_DEPTH levels, or that refers to itself. Iterative and memoised:
    linear in the document's size, whatever it expands to."""
    fix = "write the values out instead of repeating aliases"
    size: dict[int, int] = {}
    on_path = {id(root)}
    stack = [(root, iter(_yaml_children(root)))]
    while stack:
        node, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            on_path.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in _yaml_children(node))
            if size[id(node)] > MAX_YAML_VALUES:
                raise InputError(f"inventory {path} expands to more than {MAX_YAML_VALUES:,} values "
                                 "(YAML aliases repeated inside aliases)", fix=fix)
        elif id(child) in on_path:
            raise InputError(f"inventory {path}: a YAML alias at line {child.start_mark.line + 1} "
                             "refers to a value that contains it (a recursive structure)", fix=fix)
        elif id(child) not in size:
            if len(stack) >= MAX_YAML_DEPTH:
                raise InputError(f"inventory {path} nests deeper than {MAX_YAML_DEPTH} levels "
                                 f"(line {child.start_mark.line + 1})", fix="flatten the structure")
            on_path.add(id(child))
            stack.append((child, iter(_yaml_children(child))))


def _parse_yaml(text: str, path: Path):
    """``yaml.safe_load`` with bounds: the document is composed, checked by :func:`_check_yaml_size`, then
    built. Returns (data, composed root node for the line map)."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except RecursionError:  # the composer recurses once per nesting level
            raise InputError(f"inventory {path} nests deeper than {MAX_YAML_DEPTH} levels",
                             fix="flatten the structure") from None
        if root is None:
            return None, None
        _check_yaml_size(root, path)
        return loader.construct_document(root), root
    finally:
        loader.dispose()


def load_inventory(path: str | os.PathLike | None = None) -> Inventory:
    """Read and validate an inventory. ``None``: ``./petals-ops.yaml`` if present, else an empty inventory."""
    import yaml

    explicit = path is not None
    path = Path(path if explicit else os.environ.get("PETALS_OPS_INVENTORY", DEFAULT_INVENTORY)).expanduser()
    if not path.is_file():
        if explicit:
            raise InputError(f"inventory {path} does not exist",
                             fix="pass --inventory PATH (see deploy/petals-ops.example.yaml)")
        return Inventory(source=None)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise InputError(f"inventory {path} cannot be read ({reason})",
                         fix="check the file's permissions and that it is a UTF-8 YAML file") from None
    try:
        data, root = _parse_yaml(text, path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise InputError(f"inventory {path} is not valid YAML{where} ({getattr(e, 'problem', e)})",
                         fix="fix the YAML syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"inventory {path}: the top level must be a mapping (hosts:, server:)",
                         fix="see deploy/petals-ops.example.yaml")
    try:
        inv = Inventory.model_validate(data)
    except ValidationError as e:
        raise InputError(f"inventory {path}: {_first_error(e, _line_map(root))}",
                         fix="see deploy/petals-ops.example.yaml for the fields") from None
    inv.source = str(path)
    lines = _line_map(root)
    for name in inv.hosts:  # overrides are checked combined with the defaults, now rather than at use
        inv.server_for(name, _lines=lines)
    return inv


def token_digest(token: str | None) -> str | None:
    """A digest of the token for the config hash (so a new token recreates the container); never the token."""
    return None if token is None else hashlib.sha256(b"petals-ops-token:" + token.encode()).hexdigest()[:16]
