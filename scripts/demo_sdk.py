"""The README's main example: E2B's own Python SDK, unchanged, against ``ember serve``.

Run with the environment ``ember serve`` printed (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY,
E2B_DOMAIN): a sandbox is created from the ``base`` template, runs a command, writes and reads a
file, is paused, is resumed by ``Sandbox.connect``, still has the file, and is killed.
"""

from e2b import Sandbox


def main() -> None:
    sandbox = Sandbox.create()
    print(f"created {sandbox.sandbox_id}")
    print("command:", sandbox.commands.run("uname -sr && echo hello from the sandbox").stdout.strip())
    sandbox.files.write("/root/note.txt", "written before the pause")
    print("file:", sandbox.files.read("/root/note.txt"))
    sandbox.pause()
    print("paused:", Sandbox.get_info(sandbox.sandbox_id).state.value)
    resumed = Sandbox.connect(sandbox.sandbox_id)
    print("after connect, the file says:", resumed.files.read("/root/note.txt"))
    resumed.kill()
    print("killed; sandboxes left:", len(Sandbox.list().next_items()))


if __name__ == "__main__":
    main()
