"""``mig``: the command line. It talks only to the local daemon, over the Unix socket in its state directory."""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from client import _fast, _render
from client._connect import Daemon, connect
from migrated._paths import resolve_state_dir
from migrated.errors import AppFileError, CheckpointError, DaemonNotRunningError, MigError, UsageError
from migrated.transport.v1 import control_pb2 as pb

__all__ = ["cli", "main"]

DETACH_HELP = "Ctrl-D or Ctrl-C detaches and leaves the app running."


class Context:
    """The state directory and a lazily made daemon connection."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._daemon: Daemon | None = None

    @property
    def daemon(self) -> Daemon:
        """The connection, autostarting a daemon unless ``MIG_NO_AUTOSTART=1``."""
        if self._daemon is None:
            self._daemon = connect(self.state_dir)
        return self._daemon


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--dir",
    "state_dir",
    metavar="DIR",
    help="State directory (default: $MIG_DIR or ~/.local/state/migrated).",
)
@click.pass_context
def cli(ctx: click.Context, state_dir: str | None) -> None:
    """Run Python apps that can be checkpointed and moved between machines."""
    ctx.obj = Context(resolve_state_dir(state_dir))


class _AppArgs(click.Command):
    """A command whose words after ``--`` go to the app untouched; before it, every word is checked as usual
    (a mistyped option is an error that names it, not an argument of the app)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        cut = args.index("--") if "--" in args else len(args)
        ctx.meta["app_args"] = tuple(args[cut + 1 :])
        try:
            return super().parse_args(ctx, args[:cut])
        except click.UsageError as exc:
            if not exc.message.startswith("Got unexpected extra argument"):
                raise
            hint = "; words for the app go after --, as in mig run app.py -- WORDS"
            raise click.UsageError(exc.message.rstrip(".") + hint, ctx) from None


@cli.command(cls=_AppArgs)
@click.argument("target", metavar="FILE.py[:Class]")
@click.option("--name", help="The app's name (default: the file name without .py).")
@click.option("--autosave", type=float, default=0.0, metavar="SECONDS", help="Checkpoint every SECONDS.")
@click.option("--keep", default="", metavar="POLICY", help="Thin autosaves, e.g. last=20,hourly=24,daily=7.")
@click.option(
    "--restart",
    type=click.Choice(["on-crash", "never"]),
    default="on-crash",
    show_default=True,
    help="Bring the app back from its last good version when it crashes.",
)
@click.pass_context
def run(click_ctx: click.Context, target: str, name: str | None, autosave: float, keep: str, restart: str) -> None:
    """Start an app from FILE.py; words after -- go to the app as self.args (mig run sim.py -- --steps 10)."""
    ctx = click_ctx.ensure_object(Context)
    args: tuple[str, ...] = click_ctx.meta["app_args"]
    file, app_class = _split_target(target)
    path = Path(os.path.abspath(os.path.expanduser(file)))
    if not path.is_file():
        raise AppFileError(f"{file} does not exist or is not a file; give the path of an app's .py file")
    request = pb.RunRequest(
        file=str(path),
        app_class=app_class,
        name=name or "",
        cwd=os.getcwd(),
        args=list(args),
        kind=pb.APP_KIND_SCRIPT,
        autosave=autosave,
        keep=keep,
        restart=restart,
    )
    info = ctx.daemon.call(ctx.daemon.stub.Run, request)
    click.echo(f"started {info.name} (pid {info.pid}); follow it with: mig logs -f {info.name}")


@cli.command()
@click.argument("name")
@click.option("-d", "--detach", is_flag=True, help="Start the session without attaching to it.")
@pass_ctx
def repl(ctx: Context, name: str, detach: bool) -> None:
    """Start (or rejoin) a managed interactive Python session called NAME."""
    daemon = ctx.daemon
    try:
        daemon.call(daemon.stub.Get, pb.AppRef(name=name))
    except MigError as exc:
        if exc.exit_code != 3:
            raise
        request = pb.RunRequest(name=name, cwd=os.getcwd(), kind=pb.APP_KIND_REPL)
        info = daemon.call(daemon.stub.Run, request)
        click.echo(f"started repl {info.name} (pid {info.pid})", err=True)
    if not detach:
        _attach(daemon, name)


@cli.command()
@click.argument("name")
@pass_ctx
def attach(ctx: Context, name: str) -> None:
    """Connect this terminal to an app: its output here, lines typed go to its on_input."""
    _attach(ctx.daemon, name)


@cli.command()
@click.argument("name")
@click.argument("text", nargs=-1, required=True)
@pass_ctx
def send(ctx: Context, name: str, text: tuple[str, ...]) -> None:
    """Send one line of input (TEXT, words joined by spaces) to an app's on_input."""
    ctx.daemon.call(ctx.daemon.stub.Send, pb.SendRequest(name=name, text=" ".join(text)))


@cli.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the app ends.")
@click.option("-n", "--tail", type=int, default=0, help="Only the last N lines.")
@pass_ctx
def logs(ctx: Context, name: str, follow: bool, tail: int) -> None:
    """Print an app's console output."""
    daemon = ctx.daemon
    request = pb.LogsRequest(name=name, follow=follow, tail=max(0, tail))
    for _ in _print_console(daemon, request):
        pass


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--all", "everywhere", is_flag=True, help="The apps of every reachable paired host too.")
@pass_ctx
def ps(ctx: Context, as_json: bool, everywhere: bool) -> None:
    """List the apps: running, exited and crashed (with --all, on every paired host)."""
    _fast.ps(ctx.daemon, as_json, everywhere)


@cli.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="SIGKILL at once instead of letting on_stop run.")
@pass_ctx
def kill(ctx: Context, name: str, force: bool) -> None:
    """Stop a running app (on_stop runs, unless --force)."""
    info = ctx.daemon.call(ctx.daemon.stub.Kill, pb.KillRequest(name=name, force=force))
    click.echo(f"{info.name} {_render.state_name(info.state)}: {info.reason}")


@cli.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="Kill the app first if it runs.")
@pass_ctx
def rm(ctx: Context, name: str, force: bool) -> None:
    """Forget an app that no longer runs, with its console log."""
    ctx.daemon.call(ctx.daemon.stub.Remove, pb.RemoveRequest(name=name, force=force))
    click.echo(f"removed {name}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Show the daemon: host, version, state directory, apps."""
    _fast.status(ctx.daemon, as_json)


@cli.command()
@click.argument("name")
@click.argument("host")
@click.option("--stop-and-copy", is_flag=True, hidden=True, help="No pre-copy (a benchmark's baseline).")
@pass_ctx
def move(ctx: Context, name: str, host: str, stop_and_copy: bool) -> None:
    """Move a running app to a paired HOST while it runs; only the final copy freezes it."""
    import time

    started = time.perf_counter()
    copied: dict[str, pb.MoveProgress] = {}
    where = host
    with _render.MoveBar(sys.stdout.isatty()) as bar:
        for update in ctx.daemon.stub.Move(pb.MoveRequest(name=name, host=host, stop_and_copy=stop_and_copy)):
            bar.update(update)
            if update.phase.startswith("pre-copy") or update.phase == "final copy":
                copied[update.phase] = update
            if update.app.name:
                where = update.app.host
    sent = sum(update.bytes_sent for update in copied.values())
    chunks = sum(update.chunks_sent for update in copied.values())
    skipped = sum(update.chunks_skipped for update in copied.values())
    click.echo(
        f"moved {name} to {where} in {time.perf_counter() - started:.2f} s: frozen {bar.downtime * 1000:.0f} ms; "
        f"sent {_render.size(sent)} in {chunks} chunks, {skipped} chunks skipped ({where} had them)"
    )


_FILES = click.Choice(["stay", "move"])
_FILES_HELP = "Where the app's files are served from then: this host (stay), or the new home (move)."


@cli.command()
@click.argument("name")
@click.argument("host")
@click.option("--files", type=_FILES, default="stay", show_default=True, help=_FILES_HELP)
@pass_ctx
def rehome(ctx: Context, name: str, host: str, files: str) -> None:
    """Hand NAME's home (console, sockets, input) to HOST, and move it there; its files stay here unless moved."""
    reply = ctx.daemon.call(
        ctx.daemon.stub.Rehome, pb.RehomeRequest(name=name, host=host, move_files=files == "move"), timeout=3600
    )
    served = "this host" if files == "stay" else host
    click.echo(f"{name}'s home is {reply.home} now ({_render.state_name(reply.state)} there); its files: {served}")


@cli.command()
@click.option("--to", "to", metavar="HOST", required=True, help="The paired host to move every app to.")
@click.option("--rehome", is_flag=True, help="Hand each app's home to HOST too, so this host can go away.")
@click.option("--files", type=_FILES, default="stay", show_default=True, help="With --rehome: " + _FILES_HELP)
@pass_ctx
def evacuate(ctx: Context, to: str, rehome: bool, files: str) -> None:
    """Move every app running here to HOST, one after the other; one that fails stays and runs here."""
    failed = 0
    request = pb.EvacuateRequest(to=to, rehome=rehome, move_files=rehome and files == "move")
    for report in ctx.daemon.stub.Evacuate(request):
        if report.moved:
            click.echo(report.message)
        else:
            failed += 1
            click.echo(f"{report.app} stays here: {report.message}", err=True)
    if failed:
        raise click.exceptions.Exit(12)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def peers(ctx: Context, as_json: bool) -> None:
    """List the other daemons seen over mDNS, configured, or paired."""
    reply = ctx.daemon.call(ctx.daemon.stub.Peers, pb.PeersRequest())
    if as_json:
        click.echo(json.dumps([_render.peer_json(peer) for peer in reply.peers], indent=2))
    else:
        _render.peer_table(list(reply.peers), "no peers seen; pair one with `mig pair` (see `mig pair --help`)")


@cli.command()
@click.argument("host", required=False)
@click.argument("code", required=False)
@click.option("--list", "list_paired", is_flag=True, help="List the paired hosts.")
@click.option("--ttl", type=click.FloatRange(min=1, max=86400), default=300, show_default=True,
              help="Seconds the code is valid.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def pair(ctx: Context, host: str | None, code: str | None, list_paired: bool, ttl: float, as_json: bool) -> None:
    """Pair with another host: `mig pair` there shows a code, `mig pair HOST CODE` here uses it.

    HOST is a name from `mig peers`, or ADDR:PORT. Both hosts then trust each other's certificate.
    """
    if list_paired:
        reply = ctx.daemon.call(ctx.daemon.stub.Paired, pb.PairedRequest())
        if as_json:
            click.echo(json.dumps([_render.peer_json(peer) for peer in reply.peers], indent=2))
        else:
            _render.peer_table(list(reply.peers), "no paired hosts")
        return
    if host is None:
        shown = ctx.daemon.call(ctx.daemon.stub.PairCode, pb.PairCodeRequest(ttl=ttl))
        if as_json:
            click.echo(json.dumps({"code": shown.code, "expires": _render.iso(shown.expires)}))
        else:
            me = ctx.daemon.call(ctx.daemon.stub.Status, pb.StatusRequest())
            click.echo(f"pairing code {shown.code}, valid for {int(ttl)} s (until {_render.iso(shown.expires)})")
            click.echo(f"on the other host run:  mig pair {me.host} {shown.code}")
            click.echo(f"        or by address:  mig pair {me.listen} {shown.code}")
        return
    if code is None:
        raise UsageError("give the code the other host shows: mig pair HOST CODE (run `mig pair` there first)")
    peer = ctx.daemon.call(ctx.daemon.stub.Pair, pb.PairRequest(host=host, code=code), timeout=60)
    if as_json:
        click.echo(json.dumps(_render.peer_json(peer), indent=2))
    else:
        click.echo(f"paired with {peer.name} at {peer.address} (device {peer.device_id[:12]})")


@cli.command()
@click.argument("host")
@pass_ctx
def unpair(ctx: Context, host: str) -> None:
    """Forget a paired host; its calls are refused at once."""
    peer = ctx.daemon.call(ctx.daemon.stub.Unpair, pb.UnpairRequest(host=host))
    click.echo(f"unpaired {peer.name} (device {peer.device_id[:12]})")


@cli.command()
@click.argument("host")
@click.option("-c", "--count", type=click.IntRange(1, 1000), default=3, show_default=True, help="Pings to send.")
@pass_ctx
def ping(ctx: Context, host: str, count: int) -> None:
    """Ping a paired host over mutual TLS: round trips, and whether pairing holds both ways."""
    reply = ctx.daemon.call(ctx.daemon.stub.PingPeer, pb.PingPeerRequest(host=host, count=count), timeout=120)
    peer = reply.peer
    click.echo(f"{peer.name} at {peer.address}: TLS ok, certificate pinned (device {peer.device_id[:12]}), "
               "paired both ways")  # fmt: skip
    first, rest = reply.rtt_ms[0], sorted(reply.rtt_ms[1:])
    line = f"first ping {first:.2f} ms (may include connecting)"
    if rest:
        line += f"; then min {rest[0]:.2f}, median {rest[len(rest) // 2]:.2f}, max {rest[-1]:.2f} ms"
    click.echo(line)


@cli.command()
@click.argument("name")
@click.option("-m", "--message", default="", help="A note kept with the version.")
@pass_ctx
def checkpoint(ctx: Context, name: str, message: str) -> None:
    """Save a running app's state as a new version; it keeps running."""
    reply = ctx.daemon.call(ctx.daemon.stub.Checkpoint, pb.CheckpointRequest(name=name, message=message))
    version = reply.version
    click.echo(
        f"{name}: version {version.version} ({_render.size(version.bytes_added)} added, "
        f"{_render.size(version.total_bytes)} in all); paused {reply.pause_seconds * 1000:.1f} ms"
    )


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def history(ctx: Context, name: str, as_json: bool) -> None:
    """List an app's versions, oldest first."""
    reply = ctx.daemon.call(ctx.daemon.stub.History, pb.AppRef(name=name))
    if as_json:
        click.echo(json.dumps([_render.version_json(entry) for entry in reply.versions], indent=2))
    else:
        _render.history_table(list(reply.versions))


@cli.command()
@click.argument("name")
@pass_ctx
def close(ctx: Context, name: str) -> None:
    """Save an app and stop it; mig open brings it back where it left off."""
    info = ctx.daemon.call(ctx.daemon.stub.Close, pb.AppRef(name=name))
    click.echo(f"closed {info.name} at version {info.version}; mig open {info.name} brings it back")


@cli.command(name="open")
@click.argument("name")
@click.option("--version", type=int, default=0, help="Open this version instead of the latest.")
@click.option("--on", "on", metavar="HOST", default="", help="Thaw it on this paired host instead of here.")
@pass_ctx
def open_(ctx: Context, name: str, version: int, on: str) -> None:
    """Bring a closed app back from its latest version (or --version N), here or on a paired host (--on)."""
    info = ctx.daemon.call(ctx.daemon.stub.Open, pb.OpenRequest(name=name, version=version, on=on), timeout=3600)
    where = f" on {info.host}" if on else ""
    click.echo(f"opened {info.name}{where} (pid {info.pid}) from version {version or info.version}")


@cli.command()
@click.argument("name")
@click.argument("version", type=int)
@pass_ctx
def restore(ctx: Context, name: str, version: int) -> None:
    """Go back to VERSION: it becomes a new latest version (history is kept); a running app goes on from it."""
    info = ctx.daemon.call(ctx.daemon.stub.Restore, pb.RestoreRequest(name=name, version=version))
    click.echo(f"{info.name} restored version {version} as version {info.version} ({_render.state_name(info.state)})")


@cli.command()
@click.argument("name")
@click.argument("new_name", metavar="NEW")
@click.option("--version", type=int, default=0, help="Fork this version instead of the latest.")
@pass_ctx
def fork(ctx: Context, name: str, new_name: str, version: int) -> None:
    """Make a new app NEW from a version of NAME; it shares every stored chunk and starts closed."""
    request = pb.ForkRequest(name=name, new_name=new_name, version=version)
    info = ctx.daemon.call(ctx.daemon.stub.Fork, request)
    click.echo(f"forked {name} as {info.name} (version {info.version}); mig open {info.name} runs it")


@cli.command(name="export")
@click.argument("name")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The file to write.")
@click.option("--version", type=int, default=0, help="Export this version instead of the latest.")
@pass_ctx
def export_(ctx: Context, name: str, output: str, version: int) -> None:
    """Write a version of an app, with its chunks and code, to one portable file."""
    request = pb.ExportRequest(name=name, path=os.path.abspath(output), version=version)
    reply = ctx.daemon.call(ctx.daemon.stub.Export, request)
    click.echo(f"exported {name} version {reply.version.version} to {output} ({_render.size(reply.bytes)})")


@cli.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", default="", help="Import under this name (default: the name it was exported under).")
@pass_ctx
def import_(ctx: Context, file: str, name: str) -> None:
    """Check an exported file whole and add it as a new, closed app."""
    request = pb.ImportRequest(path=os.path.abspath(file), name=name, cwd=os.getcwd())
    reply = ctx.daemon.call(ctx.daemon.stub.Import, request)
    signed = f", signed by {reply.signer}" if reply.trusted else ""
    click.echo(f"imported {reply.app.name} (version {reply.app.version}{signed}); mig open {reply.app.name} runs it")
    if reply.warning:
        click.echo(f"mig: warning: {reply.warning}", err=True)


@cli.command()
@pass_ctx
def gc(ctx: Context) -> None:
    """Remove stored chunks that no version references."""
    reply = ctx.daemon.call(ctx.daemon.stub.Gc, pb.GcRequest())
    click.echo(f"removed {reply.chunks} chunks ({_render.size(reply.bytes)})")


@cli.command()
@pass_ctx
def verify(ctx: Context) -> None:
    """Re-hash every stored chunk and report damage by app and version (exit 9 when any is found)."""
    reply = ctx.daemon.call(ctx.daemon.stub.Verify, pb.VerifyRequest())
    for damage in reply.damaged:
        where = f"{damage.app} version {damage.version}" if damage.app else "no version"
        click.echo(f"damaged: {where}: chunk {damage.chunk[:16]}: {damage.reason}")
    chunks = len({damage.chunk for damage in reply.damaged})
    click.echo(f"checked {reply.chunks} chunks ({_render.size(reply.bytes)}): {chunks} damaged")
    if reply.damaged:
        versions = sorted({f"{d.app} version {d.version}" for d in reply.damaged if d.app})
        raise CheckpointError(
            f"{chunks} stored chunks are damaged, used by {', '.join(versions) or 'no version'}; "
            "restore or open an earlier version of each app, then run mig gc"
        )


@cli.command()
@pass_ctx
def shutdown(ctx: Context) -> None:
    """Stop the daemon; running apps move to --evacuate-to first if set, the rest are closed (mig open brings them
    back)."""
    try:
        daemon = connect(ctx.state_dir, autostart=False)  # never start a daemon only to stop it
    except DaemonNotRunningError:
        click.echo(f"no daemon runs for {ctx.state_dir}")
        return
    daemon.call(daemon.stub.Shutdown, pb.ShutdownRequest())
    click.echo(f"the daemon for {ctx.state_dir} is stopping")


def _split_target(target: str) -> tuple[str, str]:
    file, sep, cls = target.rpartition(":")
    if sep and cls.isidentifier() and file:
        return file, cls
    return target, ""


def _print_console(daemon: Daemon, request: pb.LogsRequest) -> Iterator[pb.ConsoleBatch]:
    """Write console batches to stdout; yield each batch."""
    stream: Any = daemon.stub.Logs(request)
    yield from _print_stream(daemon, stream)


def _print_stream(daemon: Daemon, stream: Any) -> Iterator[pb.ConsoleBatch]:
    """Write the batches of a Logs stream to stdout; yield each batch; cancel the stream when done."""
    out = sys.stdout.buffer
    try:
        for batch in stream:
            if batch.dropped:
                out.write(f"[migrated] {batch.dropped} earlier lines are no longer kept\n".encode())
            out.write(b"".join(line.data[line.skip :] for line in batch.lines) + batch.partial)
            out.flush()
            yield batch
    finally:
        stream.cancel()


def _attach(daemon: Daemon, name: str) -> None:
    """Stream output here and send typed lines until detach or the app ends."""
    daemon.call(daemon.stub.Get, pb.AppRef(name=name))
    if sys.stdin.isatty():
        click.echo(f"attached to {name}; {DETACH_HELP}", err=True)
    ended = threading.Event()
    failure: list[BaseException] = []
    stream: Any = daemon.stub.Logs(pb.LogsRequest(name=name, follow=True))

    def follow() -> None:
        try:
            for _ in _print_stream(daemon, stream):
                pass
        except BaseException as exc:
            failure.append(exc)
        finally:
            ended.set()

    output = threading.Thread(target=follow, daemon=True, name="attach-output")
    try:
        output.start()
        detached = _forward_input(daemon, name, ended)
    except KeyboardInterrupt:  # a Ctrl-C that came before the input loop (the output may be shown already)
        detached = True
    finally:
        signal.signal(signal.SIGINT, lambda *_: os._exit(130))  # a second Ctrl-C while this tidies up ends it
    if detached:
        ended.wait(0.3)  # let output that answers the last line arrive
        click.echo(f"\ndetached from {name}; it keeps running (mig attach {name} to come back)", err=True)
    stream.cancel()
    output.join(2.0)
    if not detached and failure and isinstance(failure[0], MigError):
        raise failure[0]


def _forward_input(daemon: Daemon, name: str, ended: threading.Event) -> bool:
    """Send stdin lines until EOF or Ctrl-C (True: detached) or the app ends (False)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in sys.stdin:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True, name="attach-input").start()
    try:
        while not ended.is_set():
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                return True
            daemon.call(daemon.stub.Send, pb.SendRequest(name=name, text=line))
    except KeyboardInterrupt:
        return True
    return False


def _run(command: Callable[[], Any]) -> int:
    try:
        code = command()  # not standalone: a command's click.exceptions.Exit comes back as its code
    except MigError as exc:
        click.echo(f"mig: {exc.message}", err=True)
        return exc.exit_code
    except click.UsageError as exc:
        where = f"mig {exc.ctx.command_path.removeprefix('mig').strip()}".strip() if exc.ctx else "mig"
        click.echo(f"mig: {exc.format_message().rstrip('.')}; see {where} --help", err=True)
        return UsageError.exit_code
    except click.ClickException as exc:
        click.echo(f"mig: {exc.format_message()}", err=True)
        return exc.exit_code
    except (KeyboardInterrupt, click.Abort):
        return 130
    return code if isinstance(code, int) else 0


def main() -> None:
    """Run the command line (``client._entry`` is the console script: it imports this module)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on, a Ctrl-C is the command's to handle
    sys.exit(_run(lambda: cli(standalone_mode=False)))
