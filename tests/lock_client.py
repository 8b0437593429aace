"""A qemu_client process for the lock tests (run with sys.executable).

    python lock_client.py PORT NAME MODE     (MODE: rw | ro | inactive)

Prints ``READY <generation> <session hex>`` once the VDI is open (or
``ERR <result name>`` and exits 1), then executes one command per stdin line,
answering one line each:

    write OFF HEX   -> OK | ERR <name>
    read OFF LEN    -> DATA <hex> | ERR <name>
    close           -> CLOSED (and exit)
"""

import sys

import qemu_client
from sheep.proto.errors import SdError


def main() -> int:
    port, name, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    try:
        vdi = qemu_client.open(name, port=port, readonly=mode == "ro", inactive=mode == "inactive")
    except SdError as e:
        print(f"ERR {e.name}", flush=True)
        return 1
    print(f"READY {vdi.generation} {vdi.session_id:016x}", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        try:
            if cmd[0] == "write":
                vdi.pwrite(int(cmd[1]), bytes.fromhex(cmd[2]))
                print("OK", flush=True)
            elif cmd[0] == "read":
                print("DATA " + vdi.pread(int(cmd[1]), int(cmd[2])).hex(), flush=True)
            elif cmd[0] == "close":
                vdi.close()
                print("CLOSED", flush=True)
                return 0
        except SdError as e:
            print(f"ERR {e.name}", flush=True)
        except Exception as e:  # noqa: BLE001 - report, keep serving
            print(f"ERR {type(e).__name__}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
