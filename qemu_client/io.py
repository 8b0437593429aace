"""A qemu-io-like command for VDIs, for scripting and tests without QEMU.

::

    python -m qemu_client.io VDI [-a ADDR] [-p PORT] [-r] [-l SNAPSHOT] [-q] \\
        -c "write -P 0xab 0 4M" -c "read -P 0xab 0 4M" -c "read -v 0 512" \\
        -c "discard 0 4M" -c "write -z 0 4M" -c "flush" -c "info"

Commands use qemu-io's syntax (numbers take k/M/G/T suffixes, or 0x...):

    read [-v] [-P PATTERN] OFF LEN    read; -P verifies every byte, -v dumps hex
    write [-P PATTERN] OFF LEN        write the byte PATTERN (default 0xcd)
    write -z [-u] OFF LEN             write zeros (-u: may unmap whole objects)
    discard OFF LEN                   discard (reads back as zeros)
    flush                             wait for writes in progress
    truncate SIZE                     grow the VDI
    length                            print the VDI size
    info                              print facts about the image
    snapshot -c TAG | -a ID|TAG | -d ID|TAG | -l   snapshot create/goto/delete/list

Output lines are qemu-io's ("wrote 4096/4096 bytes at offset 0", "read ...",
"Pattern verification failed at offset N, M bytes").  The commands run in
order; a failing one prints its error and the others still run; the exit
status is 1 if any command failed (or the VDI could not be opened), else 0.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from qemu_client import sync
from sheep import proto
from sheep.proto.errors import SdError

_SUFFIX = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50,
           "e": 1 << 60}
DEFAULT_PATTERN = 0xCD  # qemu-io's write pattern


class CommandError(Exception):
    """A command failed; the message is printed (qemu-io style)."""


def cvtnum(text: str) -> int:
    """qemu-io's numbers: decimal or 0x hex, optional k/M/G/T/P/E suffix (binary)."""
    t = text.strip()
    mult = 1
    if t and t[-1].lower() in _SUFFIX and not (t.lower().startswith("0x") and t[-1].lower()
                                                in "abcdef"):
        mult = _SUFFIX[t[-1].lower()]
        t = t[:-1]
    try:
        if "." in t and mult > 1:
            value = int(float(t) * mult)
        else:
            value = int(t, 0) * mult
    except ValueError:
        raise CommandError(f"invalid number: {text!r}") from None
    if value < 0:
        raise CommandError(f"invalid number: {text!r}")
    return value


def human(n: float) -> str:
    """qemu's size_to_str: 4 KiB, 1.500 MiB, ..."""
    units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    if i == 0:
        return f"{int(n)} bytes"
    return f"{n:.0f} {units[i]}" if n == int(n) else f"{n:.3f} {units[i]}"


def dump_buffer(buf: bytes, offset: int) -> list[str]:
    """qemu-io's ``read -v`` hex dump."""
    lines = []
    for i in range(0, len(buf), 16):
        row = buf[i:i + 16]
        hexes = "".join(f"{b:02x} " for b in row)
        text = "".join(chr(b) if chr(b).isalnum() and b < 128 else "." for b in row)
        lines.append(f"{offset + i:08x}:  {hexes} {text}")
    return lines


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CommandError(message)


def _cmd_parser(prog: str) -> _Parser:
    return _Parser(prog=prog, add_help=False)


class Shell:
    def __init__(self, vdi, out=sys.stdout, quiet: bool = False):
        self.vdi, self.out, self.quiet = vdi, out, quiet

    def say(self, line: str = "") -> None:
        print(line, file=self.out)

    def _timing(self, nbytes: int, t0: float) -> None:
        if self.quiet:
            return
        dt = max(time.perf_counter() - t0, 1e-9)
        self.say(f"{human(nbytes)}, 1 ops; {dt:05.2f} sec "
                 f"({human(nbytes / dt)}/sec and {1 / dt:.4f} ops/sec)")

    def run(self, line: str) -> bool:
        """Run one command line; True on success."""
        try:
            argv = shlex.split(line)
        except ValueError as e:
            self.say(f"{line}: {e}")
            return False
        if not argv:
            return True
        name, args = argv[0], argv[1:]
        handler = getattr(self, "do_" + {"r": "read", "w": "write", "d": "discard",
                                        "f": "flush"}.get(name, name), None)
        if handler is None:
            self.say(f"command \"{name}\" not found")
            return False
        try:
            handler(args)
            return True
        except _Silent:
            pass
        except CommandError as e:
            self.say(f"{name}: {e}")
        except SdError as e:
            self.say(f"{name} failed: {e.message} ({e.name})")
        except (ConnectionError, OSError) as e:
            self.say(f"{name} failed: {e}")
        return False

    # -- commands ------------------------------------------------------------

    def do_read(self, args) -> None:
        p = _cmd_parser("read")
        p.add_argument("-v", action="store_true")
        p.add_argument("-P", dest="pattern")
        p.add_argument("-q", action="store_true")
        p.add_argument("offset")
        p.add_argument("count")
        a = p.parse_args(args)
        off, count = cvtnum(a.offset), cvtnum(a.count)
        t0 = time.perf_counter()
        data = self.vdi.bdrv_pread(off, count)
        ok = True
        if a.pattern is not None:
            pat = cvtnum(a.pattern) & 0xFF
            if data != bytes([pat]) * count:
                self.say(f"Pattern verification failed at offset {off}, {count} bytes")
                ok = False
        if a.v:
            for line in dump_buffer(data, off):
                self.say(line)
        if not (a.q or self.quiet):
            self.say(f"read {count}/{count} bytes at offset {off}")
            self._timing(count, t0)
        if not ok:
            raise _Silent()

    def do_write(self, args) -> None:
        p = _cmd_parser("write")
        p.add_argument("-P", dest="pattern")
        p.add_argument("-z", action="store_true")
        p.add_argument("-u", action="store_true")
        p.add_argument("-q", action="store_true")
        p.add_argument("offset")
        p.add_argument("count")
        a = p.parse_args(args)
        off, count = cvtnum(a.offset), cvtnum(a.count)
        if a.z and a.pattern is not None:
            raise CommandError("-z and -P cannot be specified at the same time")
        if a.u and not a.z:
            raise CommandError("-u requires -z to be specified")
        t0 = time.perf_counter()
        if a.z:
            self.vdi.bdrv_pwrite_zeroes(off, count, sync.BDRV_REQ_MAY_UNMAP if a.u else 0)
        else:
            pat = DEFAULT_PATTERN if a.pattern is None else cvtnum(a.pattern) & 0xFF
            self.vdi.bdrv_pwrite(off, bytes([pat]) * count)
        if not (a.q or self.quiet):
            self.say(f"wrote {count}/{count} bytes at offset {off}")
            self._timing(count, t0)

    def do_discard(self, args) -> None:
        p = _cmd_parser("discard")
        p.add_argument("-q", action="store_true")
        p.add_argument("offset")
        p.add_argument("count")
        a = p.parse_args(args)
        off, count = cvtnum(a.offset), cvtnum(a.count)
        t0 = time.perf_counter()
        self.vdi.bdrv_pdiscard(off, count)
        if not (a.q or self.quiet):
            self.say(f"discard {count}/{count} bytes at offset {off}")
            self._timing(count, t0)

    def do_flush(self, args) -> None:
        if args:
            raise CommandError("flush takes no arguments")
        self.vdi.bdrv_flush()

    def do_truncate(self, args) -> None:
        if len(args) != 1:
            raise CommandError("usage: truncate SIZE")
        self.vdi.bdrv_truncate(cvtnum(args[0]))

    def do_length(self, args) -> None:
        self.say(human(self.vdi.bdrv_getlength()))

    def do_info(self, args) -> None:
        i = self.vdi.bdrv_get_info()
        self.say("format name: sheepdog")
        self.say(f"cluster size: {human(i['object_size'])}")
        self.say(f"vdi: {i['name']} (vid {i['vid']:x}{', snapshot' if i['snapshot'] else ''})")
        self.say(f"virtual size: {human(i['size'])} ({i['size']} bytes)")
        self.say(f"copies: {i['copies']}")
        self.say(f"read-only: {'yes' if i['readonly'] else 'no'}")
        self.say(f"lock generation: {i['generation']}")
        self.say(f"gateway: {i['gateway']}")

    def do_snapshot(self, args) -> None:
        p = _cmd_parser("snapshot")
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("-c", dest="create")
        g.add_argument("-a", dest="apply")
        g.add_argument("-d", dest="delete")
        g.add_argument("-l", dest="list", action="store_true")
        a = p.parse_args(args)
        if a.create is not None:
            self.vdi.bdrv_snapshot_create(a.create)
        elif a.apply is not None:
            self.vdi.bdrv_snapshot_goto(a.apply)
        elif a.delete is not None:
            self.vdi.bdrv_snapshot_delete(a.delete)
        else:
            self.say("Snapshot list:")
            self.say(f"{'ID':<10}{'TAG':<20}{'VM SIZE':>10}{'DATE':>21}")
            for s in self.vdi.bdrv_snapshot_list():
                date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.date_sec))
                self.say(f"{s.id:<10}{s.name:<20}{human(s.vm_state_size):>10}{date:>21}")


class _Silent(CommandError):
    """Failed, message printed already."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m qemu_client.io",
        description="qemu-io for pysheepdog VDIs: run -c commands against VDI in order.",
        epilog="commands: read [-v] [-P pat] off len | write [-P pat] off len | "
               "write -z [-u] off len | discard off len | flush | truncate size | "
               "length | info | snapshot -c tag | -a id/tag | -d id/tag | -l.  "
               "Numbers take k/M/G/T suffixes.  Exit status 1 if any command failed.")
    ap.add_argument("vdi", metavar="VDI", help="VDI name")
    ap.add_argument("-a", "--address", default="127.0.0.1", help="sheep address (127.0.0.1)")
    ap.add_argument("-p", "--port", type=int, default=proto.SD_PORT, help="sheep port (7000)")
    ap.add_argument("-r", "--read-only", action="store_true", help="open read-only")
    ap.add_argument("-l", "--snapshot", help="open this snapshot (id or tag), read-only")
    ap.add_argument("-q", "--quiet", action="store_true", help="quiet: no 'wrote/read ...' report lines")
    ap.add_argument("-c", "--cmd", action="append", default=[], metavar="COMMAND",
                    help="a command to run (repeatable)")
    a = ap.parse_args(argv)
    snapshot = None
    if a.snapshot:
        snapshot = int(a.snapshot) if a.snapshot.isdigit() else a.snapshot
    flags = sync.BDRV_O_RDONLY if (a.read_only or snapshot) else sync.BDRV_O_RDWR
    try:
        vdi = sync.bdrv_open(a.vdi, snapshot=snapshot, flags=flags, host=a.address, port=a.port)
    except SdError as e:
        print(f"qemu-io: can't open device {a.vdi}: {e.message} ({e.name})", file=sys.stderr)
        return 1
    except (ConnectionError, OSError) as e:
        print(f"qemu-io: can't open device {a.vdi}: {e}", file=sys.stderr)
        return 1
    failed = False
    try:
        shell = Shell(vdi, quiet=a.quiet)
        for line in a.cmd:
            if not shell.run(line):
                failed = True
        sys.stdout.flush()
    finally:
        try:
            vdi.close()
        except (SdError, ConnectionError, OSError) as e:
            print(f"qemu-io: closing {a.vdi}: {e}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
