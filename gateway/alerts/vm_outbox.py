"""Messages from the user's jobs on the VM (``gw-notify``, ``gw-run``) to the phone.

``gw-notify`` (installed by the bootstrap) writes one JSON file per message into the VM's
outbox, atomically. A collection reads the outbox over the ssh the gateway already has
(``gateway.vm_ssh``: pinned host key, no ssh config), hands each new message to the
Sender, and once the Sender has sent it, records its id as delivered in the state
directory (atomically) and only then removes the file on the VM. So a collection cut
anywhere delivers each message once: cut before sending, the file is still there and
is read again; cut after recording, the id is skipped and the file removed next time.

The VM is only semi-trusted (any notebook cell is root there): names are checked before
they reach a command line, every read is bounded in count and size, and every text goes
through ``redact`` and ``untrusted`` before it reaches a log or a phone.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.alerts.events import Alert
from gateway.atomic import atomic_write
from gateway.secrets import redact
from gateway.untrusted import untrusted

log = logging.getLogger("gateway.alerts")

OUTBOX = "/root/.colab-gateway/outbox"  # GW_OUTBOX of the bootstrap, as root on Colab
EVENT = "vm_message"
PER_COLLECTION = 10  # messages read at once; more wait on the VM for the next collection
FILE_BYTES = 32768  # of one message file: gw-notify writes 4,200 characters, JSON-escaped
TITLE_LIMIT = 200
LINE_LIMIT = 300
BODY_LINES = 30
REMEMBERED = 2000  # delivered ids kept (the newest): enough to outlast any outbox
SSH_TIMEOUT = 30.0
# gw-notify's names: <nanoseconds>-<8 hex>.json. Nothing else becomes part of a command.
_NAME = re.compile(r"^([0-9]{1,20}-[0-9a-f]{8})\.json$")


def list_command(outbox: str = OUTBOX, limit: int = PER_COLLECTION) -> str:
    """Prints ``NAME BASE64`` per message file, oldest first, at most ``limit``, each file
    cut at FILE_BYTES: one line each, whatever bytes the files hold."""
    return (
        f"cd {shlex.quote(outbox)} 2>/dev/null || exit 0; n=0; "
        "for f in [0-9]*-*.json; do "
        '[ -f "$f" ] && [ ! -L "$f" ] || continue; '
        f'n=$((n+1)); [ "$n" -le {int(limit)} ] || break; '
        f'printf \'%s \' "$f"; head -c {FILE_BYTES} -- "$f" | base64 -w0; echo; '
        "done"
    )


def remove_command(ids: Sequence[str], outbox: str = OUTBOX) -> str:
    names = " ".join(shlex.quote(f"{i}.json") for i in ids if _NAME.match(f"{i}.json"))
    return f"cd {shlex.quote(outbox)} && rm -f -- {names}"


@dataclass(frozen=True)
class VMMessage:
    id: str
    title: str
    message: str
    at: float | None


def parse_listing(text: str, limit: int = PER_COLLECTION) -> tuple[list[VMMessage], int]:
    """The messages in ``list_command``'s output, and how many lines were unusable."""
    messages: list[VMMessage] = []
    bad = 0
    for line in text.splitlines()[:limit]:
        name, _, encoded = line.partition(" ")
        match = _NAME.match(name)
        if match is None:
            bad += 1
            continue
        try:
            raw = json.loads(base64.b64decode(encoded[: FILE_BYTES * 2], validate=True))
            title, message = raw.get("title", ""), raw.get("message", "")
            at = raw.get("at")
            if not isinstance(title, str) or not isinstance(message, str):
                raise ValueError("title and message must be strings")
        except (ValueError, binascii.Error, AttributeError):
            # Not gw-notify's: still delivered once (and removed), as a message that says so.
            title, message, at = "", "(an unreadable message file in the VM's outbox)", None
        moment = float(at) if isinstance(at, int | float) and not isinstance(at, bool) else None
        messages.append(VMMessage(match.group(1), title, message, moment))
    return messages, bad


def alert_for(message: VMMessage, session: str, host: str) -> Alert:
    """What the phone shows: the job's title and lines, redacted, escaped and bounded."""
    # Split at newlines only: a carriage return (or another of splitlines' separators)
    # stays in its line and is shown escaped, not turned into a line that looks like ours.
    lines = message.message.split("\n")
    first = lines[0] if not message.title else message.title
    title = untrusted(redact(f"colab-gateway on {host}: {session}: {first}"), TITLE_LIMIT)
    shown = [untrusted(redact(line), LINE_LIMIT) for line in lines[-BODY_LINES:]]
    if len(lines) > BODY_LINES:
        shown.insert(0, f"({len(lines) - BODY_LINES} earlier line(s) left out)")
    body = "\n".join([f"From the VM of session {session} (gw-notify):", *shown])
    return Alert(EVENT, session, title, body)


@dataclass
class Delivered:
    """The ids already sent, in ``<state>/vm-messages/<session>.json`` (atomic writes)."""

    path: Path
    ids: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Delivered:
        try:
            raw = json.loads(path.read_text())
            ids = [str(i) for i in raw["delivered"] if isinstance(i, str)]
        except (OSError, ValueError, KeyError, TypeError):
            ids = []
        return cls(path, ids)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self.ids

    def add(self, message_id: str) -> None:
        if message_id in self.ids:
            return
        self.ids = [*self.ids, message_id][-REMEMBERED:]
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.path, json.dumps({"delivered": self.ids}) + "\n", mode=0o600)


class SSHFailed(Exception):
    pass


async def _read_up_to(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Until the end or ``limit`` bytes (``read(n)`` returns what has arrived so far)."""
    data = b""
    while len(data) < limit:
        chunk = await stream.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def run_ssh(argv: Sequence[str], limit: int, timeout: float = SSH_TIMEOUT) -> str:
    """stdout of ``argv`` (ssh ... COMMAND), at most ``limit`` bytes; SSHFailed if it
    failed, timed out or said more."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = await asyncio.wait_for(
            asyncio.gather(_read_up_to(proc.stdout, limit + 1), _read_up_to(proc.stderr, 2000)),
            timeout,
        )
        if len(out) > limit:
            raise SSHFailed(f"the VM said more than {limit} bytes")
        status = await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        raise SSHFailed(f"no answer within {timeout:.0f}s") from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if status != 0:
        said = untrusted(err.decode(errors="replace").strip(), 200)
        raise SSHFailed(f"ssh exited with status {status}: {said}")
    return out.decode(errors="replace")


class Collector:
    """One session's outbox. ``ssh`` is the argv up to the remote command."""

    def __init__(
        self,
        session: str,
        ssh: Sequence[str],
        delivered_path: Path,
        *,
        host: str,
        outbox: str = OUTBOX,
    ) -> None:
        self.session = session
        self.ssh = list(ssh)
        self.outbox = outbox
        self.host = host
        self.delivered = Delivered.load(delivered_path)
        self.in_flight: dict[str, Alert] = {}  # handed to the Sender, not yet sent

    async def read(self) -> list[VMMessage]:
        limit = PER_COLLECTION * (FILE_BYTES * 4 // 3 + 100)
        text = await run_ssh([*self.ssh, list_command(self.outbox)], limit)
        messages, bad = parse_listing(text)
        if bad:
            log.warning("session %s: %d line(s) of the VM's outbox listing were unusable",
                        self.session, bad)  # fmt: skip
        return messages

    def hand_over(self, messages: Sequence[VMMessage], put: Callable[[Alert], None]) -> list[str]:
        """Queue the new messages (``put``: Sender.put); the ids already delivered."""
        done = []
        for message in messages:
            if message.id in self.delivered:
                done.append(message.id)
            elif message.id not in self.in_flight:
                alert = alert_for(message, self.session, self.host)
                log.info("session %s: a message from the VM: %s", self.session, alert.title)
                self.in_flight[message.id] = alert
                put(alert)
        return done

    def settle(self, sent: Callable[[Alert], bool]) -> list[str]:
        """Record as delivered every in-flight message ``sent(alert)`` says has left."""
        done = []
        for message_id, alert in list(self.in_flight.items()):
            if sent(alert):
                self.delivered.add(message_id)  # before the VM forgets it: exactly once
                del self.in_flight[message_id]
                done.append(message_id)
        return done

    async def remove(self, ids: Sequence[str]) -> None:
        if ids:
            await run_ssh([*self.ssh, remove_command(ids, self.outbox)], 4096)

    async def collect(self, put: Callable[[Alert], None], sent: Callable[[Alert], bool]) -> int:
        """One collection: read, hand over, record what was sent, remove it on the VM.
        Returns how many messages were removed from the VM."""
        messages = await self.read()
        done = self.hand_over(messages, put)
        done += self.settle(sent)
        await self.remove(done)
        return len(done)
