"""Result codes as exceptions.

Every failure inside the daemon, collie or qemu_client that has a Sheepdog
result code is raised as :class:`SdError` (or a subclass looked up by code),
so the code travels unchanged from where it is detected to the reply header.
Imports nothing else from the project.
"""

from __future__ import annotations

# code -> (name, message); the messages are the ones dog prints (sd_strerror).
RESULTS: dict[int, tuple[str, str]] = {
    0x00: ("SUCCESS", "Success"),
    0x01: ("UNKNOWN", "Unknown error"),
    0x02: ("NO_OBJ", "No object found"),
    0x03: ("EIO", "I/O error"),
    0x04: ("VDI_EXIST", "VDI exists already"),
    0x05: ("INVALID_PARMS", "Invalid parameters"),
    0x06: ("SYSTEM_ERROR", "System error"),
    0x07: ("VDI_LOCKED", "VDI is already locked"),
    0x08: ("NO_VDI", "No VDI found"),
    0x09: ("NO_BASE_VDI", "No base VDI found"),
    0x0A: ("VDI_READ", "Failed to read from requested VDI"),
    0x0B: ("VDI_WRITE", "Failed to write to requested VDI"),
    0x0C: ("BASE_VDI_READ", "Failed to read from base VDI"),
    0x0D: ("BASE_VDI_WRITE", "Failed to write to base VDI"),
    0x0E: ("NO_TAG", "Failed to find requested tag"),
    0x0F: ("STARTUP", "System is still booting"),
    0x10: ("VDI_NOT_LOCKED", "VDI is not locked"),
    0x11: ("SHUTDOWN", "System is shutting down"),
    0x12: ("NO_MEM", "Out of memory on server"),
    0x13: ("FULL_VDI", "Maximum number of VDIs reached"),
    0x14: ("VER_MISMATCH", "Protocol version mismatch"),
    0x15: ("NO_SPACE", "Server has no space for new objects"),
    0x16: ("WAIT_FOR_FORMAT", "Waiting for cluster to be formatted"),
    0x17: ("WAIT_FOR_JOIN", "Waiting for other nodes to join cluster"),
    0x18: ("JOIN_FAILED", "Node has failed to join cluster"),
    0x19: ("HALT", "IO has halted as there are not enough living nodes"),
    0x1A: ("READONLY", "Object is read-only"),
    # pysheepdog extension (unassigned in 1.0; only sent to clients that set
    # SD_FLAG_CMD_SESSION): a write carried a lock generation that is no
    # longer the VDI's current exclusive grant — the writer's lock was broken
    0x1B: ("FENCED", "Write fenced: the VDI lock of this writer was released or taken over"),
    0x1D: ("INODE_INVALIDATED", "Inode object is invalidated"),
    0x81: ("OLD_NODE_VER", "Request has an old epoch"),
    0x82: ("NEW_NODE_VER", "Request has a new epoch"),
    0x83: ("NOT_FORMATTED", "Cluster has not been formatted"),
    0x84: ("INVALID_CTIME", "Creation times differ"),
    0x85: ("INVALID_EPOCH", "Invalid epoch"),
    0x86: ("NETWORK_ERROR", "Network error between sheep"),
    0x87: ("NO_CACHE", "No object cache"),
    0x88: ("BUFFER_SMALL", "The buffer is too small"),
    0x89: ("FORCE_RECOVER", "Cluster is running/halted and cannot be force recovered"),
    0x8A: ("NO_STORE", "Targeted backend store is not found"),
    0x8B: ("NO_SUPPORT", "Operation is not supported by backend store"),
    0x8C: ("NODE_IN_RECOVERY", "Targeted node is in recovery"),
    0x8D: ("KILLED", "Node is killed"),
    0x8E: ("OID_EXIST", "Object ID exists already"),
    0x8F: ("AGAIN", "Ask to try again"),
    0x90: ("STALE_OBJ", "Object may be stale"),
    0x91: ("CLUSTER_ERROR", "Cluster driver error"),
    0x92: ("VDI_NOT_EMPTY", "VDI is not empty"),
    0x93: ("NOT_FOUND", "Cannot found target"),
    0x94: ("INCOMPLETE", "Object (in kv) is incomplete uploading"),
    0x95: ("COLLECTING_CINFO", "Sheep is collecting cluster wide status, try again"),
    0x97: ("GATEWAY_MODE", "Targeted node is gateway mode"),
    0x98: ("INVALID_VNODES_STRATEGY", "Invalid cluster vnodes strategy"),
    0x99: ("NO_CHECKPOINT_ENTRY", "Checkpoint entry is not found"),
}

#: name -> code, e.g. ``CODES["NO_OBJ"] == 0x02``
CODES: dict[str, int] = {name: code for code, (name, _msg) in RESULTS.items()}


def result_name(code: int) -> str:
    """Symbolic name of a result code (``"UNKNOWN_0xNN"`` if unassigned)."""
    entry = RESULTS.get(code)
    return entry[0] if entry else f"UNKNOWN_{code:#04x}"


def strerror(code: int) -> str:
    """The human message dog prints for a result code."""
    entry = RESULTS.get(code)
    return entry[1] if entry else "Invalid error code %x" % code


class SdError(Exception):
    """A failure carrying a Sheepdog result code (never SUCCESS)."""

    code: int = 0x01

    def __init__(self, code: int | None = None, message: str | None = None):
        if code is not None:
            self.code = code
        self.message = message or strerror(self.code)
        super().__init__(self.message)

    @property
    def name(self) -> str:
        return result_name(self.code)

    def __repr__(self) -> str:
        return f"SdError({self.name}, {self.message!r})"


#: names that would shadow a builtin exception once "Error" is added
_RENAMED = {"SYSTEM_ERROR": "SheepSystemError"}


def class_name(name: str) -> str:
    """The exception class name of a result name: ``NO_VDI`` -> ``NoVdiError``,
    ``CLUSTER_ERROR`` -> ``ClusterError`` (never ``...ErrorError``)."""
    if name in _RENAMED:
        return _RENAMED[name]
    words = name.split("_")
    if words[-1] == "ERROR":
        words = words[:-1]
    return "".join(w.capitalize() for w in words) + "Error"


_BY_CODE: dict[int, type[SdError]] = {}
#: every typed exception class, by its clean name
ERROR_CLASSES: dict[str, type[SdError]] = {}
for _code, (_name, _msg) in RESULTS.items():
    if _code == 0:
        continue
    _cls_name = class_name(_name)
    _cls = type(_cls_name, (SdError,), {"code": _code, "__doc__": _msg + ".",
                                        "__module__": __name__, "__qualname__": _cls_name})
    globals()[_cls_name] = _cls
    _BY_CODE[_code] = _cls
    ERROR_CLASSES[_cls_name] = _cls
    _old = "".join(p.capitalize() for p in _name.split("_")) + "Error"
    if _old != _cls_name:  # the names before the clean-up stay importable
        globals()[_old] = _cls


def error_for(code: int, message: str | None = None) -> SdError:
    """The typed exception for ``code`` (e.g. ``NoObjError`` for NO_OBJ)."""
    cls = _BY_CODE.get(code, SdError)
    return cls(code, message)


def sd_error(name: str, message: str | None = None) -> SdError:
    """The typed exception for the result named ``name`` (e.g. ``"NO_OBJ"``).

    Raises ``KeyError`` for a name that is not a Sheepdog result, so a typo
    fails loudly at the raise site instead of sending a wrong code.
    """
    return error_for(CODES[name], message)


def raise_for(code: int, message: str | None = None) -> None:
    """Raise the typed exception for a non-zero result code; no-op on SUCCESS."""
    if code:
        raise error_for(code, message)
