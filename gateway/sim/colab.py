"""A simulated Colab notebook page, served on 127.0.0.1, driven from Python.

The page (``notebook.html``) draws what ../shared/colab-dom.md records of Colab's real
page (docs/demo.md lists what is simulated):

* dialogs are ``body > mwc-dialog[open]``: the title only in the ``heading`` attribute,
  drawn into the shadow root's ``h2#title``; the content and the ``md-text-button``
  actions (``[slot=primaryAction]``, often ``dialogaction="ok"``, and
  ``[slot=secondaryAction]``) in light DOM. Several may be open, the newest last (on top);
  Escape closes the one on top;
* the connect button ``colab-connect-button`` → shadowRoot →
  ``colab-toolbar-button#connect.split-button`` (its shadowRoot ``md-text-button#button`` →
  ``button#button``; light-DOM label ``div.connect-button-content``: the word and the
  accelerator, ``T4``), ``#connect-dropdown`` beside it, the ``tooltiptext`` values of the
  evidence; while connected the tooltip's RAM figure (and ``.ram`` bar) changes every
  second (``noisy``);
* the reCAPTCHA prompt ``colab-recaptcha-dialog`` → shadowRoot ``mwc-button`` → shadowRoot
  ``#button``;
* code cells with ``colab-run-button`` in ``.cell-gutter .cell-execution-container
  .cell-execution`` (a click runs the cell, or interrupts it while it runs: shadowRoot
  ``#stopSymbolMask`` and ``.cell-execution.running``), Monaco editors built lazily
  (``div.editor.lazy-editor`` until the cell is clicked or scrolled into view, then
  ``.monaco .monaco-editor textarea.inputarea``; the FIRST cell's editor is lazy at load
  while the second cell's is built, so a document-wide first textarea is the second
  cell's) and output iframes
  (``iframe[src*="outputframe"]``) that keep the keys pressed in them; Ctrl+Enter runs the
  cell whose editor has the focus, Ctrl+F9 runs all only with the focus inside
  ``.notebook-cell-list``; Colab's Files panel is open and takes the middle of the window;
* the language of the account (``en`` or ``pt``: dialogs, tooltips, button words,
  ``<html lang>``) unless the URL says ``hl=en``;
* a ``beforeunload`` guard and a redirect to a sign-in page.

The scenario lives here, in the server; the page follows it by long-polling ``/api/state``
and posts back every click, key and render it sees (with its own clock) to
``/api/event``. Tests assert what the PAGE recorded, not what the automation believes.

API::

    sim = SimColab(connect_delay=0.3, gpu=True, variant="", language="en", noisy=True)
    sim.start()                 # binds 127.0.0.1 on a free port
    sim.url                     # the notebook's address (http://127.0.0.1:PORT/notebook)
    sim.url_of("md_dialog")     # the same notebook in another markup variant
    # scenario controls (each takes effect on the page within ~50 ms)
    sim.disconnect(dialog=True) # the runtime drops; "Runtime disconnected" opens on top
    sim.disconnect(kind="disallowed")       # ... with another disconnect dialog
    sim.show_dialog("still_there")          # opens a dialog on top of the open ones
    sim.show_dialogs("runtime_disconnected", "notice")  # stacked, the last on top
    sim.close_dialog(kind=None) # closes that kind (None: every dialog)
    sim.dialogs_open()          # kinds, bottom first; sim.dialog is the one on top
    sim.show_recaptcha(times=1)             # times=None: comes back after every dismissal
    sim.hide_recaptcha()                    # a person answered it
    sim.set_gpu_limit(True)     # connecting with GPU shows the usage-limit dialog
    sim.set_too_many_sessions(True)
    sim.set_no_backend(True)    # connecting shows "Failed to assign a backend"
    sim.set_disallowed(True)    # each cell run ends in a "disallowed" disconnect
    sim.set_run_anyway(True)    # the first run of any cell per page load asks "Run anyway"
    sim.set_cell_duration(s)    # how long a run lasts
    sim.set_noisy(False)        # the tooltip's figures stop changing
    sim.set_language("pt")      # the account's language (the URL's hl=en still wins)
    sim.set_language("pt", over_hl=True)    # ... and wins over hl=en (language_over_hl=)
    sim.set_busy(True)          # the tooltip says "Waiting to finish the current execution."
    sim.set_leave_guard(True)   # unloading the page raises a "Leave site?" prompt
    sim.reset_vm()              # Colab swaps the VM under a connected runtime
    sim.sign_out() / sim.sign_in()
    sim.fail_loads(n)           # the next n page loads get an answer that is not HTTP
    sim.hang_page()             # the page's JavaScript spins forever (once)
    # what happened
    sim.events(type="click")    # list of dicts as the page posted them; "t" = page ms epoch
    sim.wait_for(lambda s: ..., timeout=5)  # bounded wait on the event list / state
    sim.runtime, sim.vm_id, sim.gpu, sim.runs, sim.running, sim.running_cells
    # hooks the demo sets (called in a server thread)
    sim.on_connect = lambda vm_id: ...
    sim.on_run_cell = lambda kind: ...      # "first" | "cell" | "all"
    sim.on_reset = lambda: ...
    sim.stop()

Dialog kinds (``_DIALOGS``): runtime_disconnected, still_there, still_here, gpu_limit,
too_many_sessions, notice (an upsell nobody knows), run_anyway, gpu_idle (its primary
action switches the runtime to CPU: action ``switched_to_cpu``), disallowed, no_backend,
signed_out (class ``signed-out-dialog``, "Sign in to continue").

Markup variants (``variant=`` or ``?variant=a,b`` on the URL; the query wins), for the
markup drift real Colab goes through (see ``VARIANTS``): ``no_editor`` (cells whose editor
is a CodeMirror-style ``.cm-content``), ``monaco`` (every editor built at load),
``no_run_button``, ``renamed_connect`` (``colab-runtime-button``), ``dialog_buttons``
(``gm-text-button``), ``dialog_element`` (``colab-dialog``), ``md_dialog`` (the older
``md-dialog`` with a ``[slot=headline]`` child), ``recaptcha_md`` (the prompt's button is
``md-text-button``). Every variant still works for a person: keys and clicks in a cell
run it.

Event types the page posts: ``load`` (url, query, language, languages, ua, variant),
``click`` (target: connect | connect_dropdown | dialog | recaptcha | run_button; button,
cell, running, trusted), ``key`` (key, ctrl, cell, focus: notebook | body | output_frame |
a tag name), ``ignored`` (a Ctrl+F9 outside the notebook), ``pointer`` (trusted clicks),
``shown`` (what: disconnected | connected | dialog | dialog_layout (with each button's
centre in viewport pixels) | recaptcha | vm_id | editor_built), ``beforeunload``.
The server adds ``action`` events for what it did with them: ``run`` (kind, cell),
``interrupted`` (cell), ``run_cancelled``, ``dialog_<kind>_<choice>`` (choice ``escape``
for Escape), ``switched_to_cpu``, ``no_backend``, ``disconnect``;
``connect_while_connected`` flags a click on Connect while already connected, which real
Colab answers by opening the resources panel.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlparse

log = logging.getLogger(__name__)

# Every dialog the page can show, in English, with its Portuguese words in "pt" (the page
# draws the language it speaks). "classes" lands on the dialog element; "ok" marks the
# button that carries dialogaction="ok".
_DIALOGS: dict[str, dict[str, Any]] = {
    "runtime_disconnected": {
        "title": "Runtime disconnected",
        "text": "Your runtime has been disconnected due to inactivity or reaching its maximum "
        "duration.",
        "buttons": [
            {"text": "Close", "slot": "secondaryAction", "action": "close"},
            {"text": "Reconnect", "slot": "primaryAction", "action": "connect", "ok": True},
        ],
        "pt": {
            "title": "Ambiente de execução desconectado",
            "text": "Seu ambiente de execução foi desconectado por inatividade ou por atingir a "
            "duração máxima.",
            "buttons": ["Fechar", "Reconectar"],
        },
    },
    "still_there": {
        "title": "Are you still there?",
        "text": "Your runtime will be disconnected soon unless you confirm you are still here.",
        "buttons": [
            {"text": "Yes, I'm here", "slot": "primaryAction", "action": "close", "ok": True}
        ],
        "pt": {
            "title": "Você ainda está aí?",
            "text": "Seu ambiente de execução será desconectado em breve, a menos que você "
            "confirme que ainda está aqui.",
            "buttons": ["Sim, estou aqui"],
        },
    },
    # the same prompt in the wording users also quote (colabtools #3829)
    "still_here": {
        "title": "Are you still here?",
        "text": "Your runtime will be disconnected soon unless you confirm you are still here.",
        "buttons": [{"text": "Yes", "slot": "primaryAction", "action": "close", "ok": True}],
        "pt": {
            "title": "Você ainda está aqui?",
            "text": "Seu ambiente de execução será desconectado em breve.",
            "buttons": ["Sim"],
        },
    },
    "gpu_limit": {
        "title": "Cannot connect to GPU backend",
        "text": "You cannot currently connect to a GPU due to usage limits in Colab.",
        "buttons": [
            {"text": "Close", "slot": "secondaryAction", "action": "close"},
            {"text": "Connect without GPU", "slot": "primaryAction", "action": "connect_cpu"},
        ],
        "pt": {
            "title": "Não é possível se conectar ao back-end de GPU",
            "text": "No momento, não é possível se conectar a uma GPU devido aos limites de uso "
            "do Colab.",
            "buttons": ["Fechar", "Conectar sem GPU"],
        },
    },
    "too_many_sessions": {
        "title": "Too many sessions",
        "text": "You have too many active sessions. Terminate other sessions to continue.",
        "buttons": [
            {"text": "Cancel", "slot": "secondaryAction", "action": "close"},
            {"text": "Manage sessions", "slot": "primaryAction", "action": "close"},
        ],
        "pt": {
            "title": "Muitas sessões",
            "text": "Você tem muitas sessões ativas. Encerre outras sessões para continuar.",
            "buttons": ["Cancelar", "Gerenciar sessões"],
        },
    },
    # a dialog the keep-alive does not know (an upsell): it stays open until answered
    "notice": {
        "title": "Colab has a new feature",
        "text": "Try the new editor settings.",
        "buttons": [
            {"text": "Later", "slot": "secondaryAction", "action": "close"},
            {"text": "OK", "slot": "primaryAction", "action": "close", "ok": True},
        ],
        "pt": {
            "title": "O Colab tem um novo recurso",
            "text": "Experimente as novas configurações do editor.",
            "buttons": ["Mais tarde", "OK"],
        },
    },
    "run_anyway": {
        "title": "Warning: This notebook was not authored by Google",
        "text": "This notebook is requesting access to your runtime. Review the code.",
        "buttons": [
            {"text": "Cancel", "slot": "secondaryAction", "action": "cancel_pending"},
            {"text": "Run anyway", "slot": "primaryAction", "action": "run_pending", "ok": True},
        ],
        "pt": {
            "title": "Aviso: este notebook não foi criado pelo Google",
            "text": "Este notebook está solicitando acesso ao seu ambiente de execução. Revise o "
            "código.",
            "buttons": ["Cancelar", "Executar mesmo assim"],
        },
    },
    # colabtools #6082: comes back about every 15 min on an idle GPU runtime; its primary
    # action switches the runtime to CPU (the page records `switched_to_cpu`)
    "gpu_idle": {
        "title": "You are connected to a GPU runtime, but not utilizing the GPU",
        "text": "You are connected to a GPU runtime, but not utilizing the GPU. Change to a "
        "standard runtime to avoid using compute units.",
        "buttons": [
            {"text": "Close", "slot": "secondaryAction", "action": "close"},
            {
                "text": "Change to standard runtime",
                "slot": "primaryAction",
                "action": "switch_cpu",
                "ok": True,
            },
        ],
        "pt": {
            "title": "Você está conectado a um ambiente de execução com GPU, mas não está "
            "utilizando a GPU",
            "text": "Você está conectado a um ambiente de execução com GPU, mas não está "
            "utilizando a GPU. Mude para um ambiente de execução padrão.",
            "buttons": ["Fechar", "Mudar para o ambiente padrão"],
        },
    },
    "disallowed": {
        "title": "Runtime disconnected",
        "text": "Your runtime has been disconnected due to executing code that is disallowed "
        "in our free of charge tier. Colab subscribers get access to more compute. "
        "Repeated abuse may result in your access being restricted.",
        "buttons": [
            {"text": "Close", "slot": "secondaryAction", "action": "close"},
            {"text": "Reconnect", "slot": "primaryAction", "action": "connect", "ok": True},
        ],
        "pt": {
            "title": "Ambiente de execução desconectado",
            "text": "Seu ambiente de execução foi desconectado devido à execução de código não "
            "permitido no nosso nível sem custo financeiro.",
            "buttons": ["Fechar", "Reconectar"],
        },
    },
    "no_backend": {
        "title": "Failed to assign a backend",
        "text": "Failed to assign a backend. No backend with GPU available. This may be due "
        "to a restriction in your location. Please try again later.",
        "buttons": [
            {"text": "Close", "slot": "secondaryAction", "action": "close"},
            {"text": "OK", "slot": "primaryAction", "action": "close", "ok": True},
        ],
        "pt": {
            "title": "Falha ao atribuir um back-end",
            "text": "Falha ao atribuir um back-end. Nenhum back-end com GPU disponível. Tente "
            "novamente mais tarde.",
            "buttons": ["Fechar", "OK"],
        },
    },
    # jerronl a77159e: the account was signed out while the notebook stayed open
    "signed_out": {
        "title": "You have been signed out",
        "text": "You have been signed out of your Google account. Sign in to continue using Colab.",
        "classes": "signed-out-dialog",
        "buttons": [{"text": "Sign in to continue", "slot": "primaryAction", "action": "sign_in"}],
        "pt": {
            "title": "Você saiu da sua conta",
            "text": "Você foi desconectado da sua Conta do Google. Faça login para continuar "
            "usando o Colab.",
            "buttons": ["Fazer login para continuar"],
        },
    },
}

LANGUAGES = ("en", "pt")

# Each variant changes one structure the keep-alive depends on, the way Colab's releases do.
VARIANTS: dict[str, str] = {
    "no_editor": "cells have a CodeMirror-style .cm-content editor, no textarea",
    "monaco": "every cell's Monaco editor is built at load (none is lazy)",
    "no_run_button": "cells have no colab-run-button",
    "renamed_connect": "the toolbar's connect button is colab-runtime-button",
    "dialog_buttons": "dialog buttons are gm-text-button",
    "dialog_element": "dialogs are colab-dialog[open] (title in a [slot=headline] child)",
    "md_dialog": "dialogs are md-dialog[open] with a [slot=headline] child (before mwc-dialog)",
    "recaptcha_md": "the reCAPTCHA prompt's button is md-text-button (2024-12 to 2025-05)",
}

_CELL_CODE = ("#@title Bootstrap: start the tunnel", 'print("second cell")')
# The cell whose editor Colab has already built at load (the one last edited); every other
# cell's editor is built when the cell is clicked or scrolled into view.
BUILT_AT_LOAD = 1


def monaco_editor(code: str) -> str:
    """Monaco's structure, as notebook.html's buildEditor() draws it for a lazy cell."""
    return (
        '<div class="editor flex monaco" data-built="1"><div class="monaco-editor">'
        '<div class="overflow-guard">'
        '<textarea class="inputarea monaco-mouse-cursor-text" wrap="off" autocorrect="off" '
        'aria-label="Editor content"></textarea>'
        f'<div class="view-lines"><div class="view-line">{code}</div></div>'
        "</div></div></div>"
    )


def _cell_html(index: int, code: str, features: frozenset[str]) -> str:
    run = (
        ""
        if "no_run_button" in features
        else '<div class="cell-gutter"><div class="cell-execution-container">'
        '<div class="cell-execution"><colab-run-button title="Run cell (Ctrl+Enter)">'
        "</colab-run-button></div></div></div>"
    )
    if "no_editor" in features:
        editor = (
            f'<div class="editor"><div class="cm-content" contenteditable="true">{code}</div></div>'
        )
    elif "monaco" in features or index == BUILT_AT_LOAD:
        editor = monaco_editor(code)
    else:
        editor = f'<div class="editor flex lazy-editor"><pre class="lazy-code">{code}</pre></div>'
    output = (
        f'<div class="output"><iframe class="output-iframe" src="/outputframe?cell={index}" '
        'title="cell output"></iframe></div>'
    )
    return (
        f'  <div class="cell code" data-index="{index}" id="cell-{index}">\n    {run}\n'
        '    <div class="codecell-input-output"><div class="inputarea horizontal layout code">'
        f"{editor}</div>{output}</div>\n  </div>"
    )


def parse_variant(text: str) -> frozenset[str]:
    """``"a,b"`` → its features; an unknown name is an error naming the known ones."""
    features = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(features - set(VARIANTS))
    if unknown:
        raise ValueError(
            f"unknown sim page variant {', '.join(unknown)!s}; known: {', '.join(VARIANTS)}"
        )
    return features


def render_page(template: bytes, features: frozenset[str], hl: str = "", lang: str = "en") -> bytes:
    """The notebook page in markup ``features``; ``hl`` is the URL's ``hl=`` (if any) and
    ``lang`` the language the page speaks at load (it follows the scenario afterwards)."""
    renamed = "renamed_connect" in features
    connect_tag = "colab-runtime-button" if renamed else "colab-connect-button"
    if "dialog_element" in features:
        dialog_tag = "colab-dialog"
    elif "md_dialog" in features:
        dialog_tag = "md-dialog"
    else:
        dialog_tag = "mwc-dialog"
    page = {
        "name": ",".join(sorted(features)),
        "connect_tag": connect_tag,
        "dialog_tag": dialog_tag,
        "dialog_button_tag": "gm-text-button" if "dialog_buttons" in features else "md-text-button",
        "recaptcha_button_tag": "md-text-button" if "recaptcha_md" in features else "mwc-button",
        "hl": hl,
        "lang": lang,
    }
    cells = "\n".join(_cell_html(i, code, features) for i, code in enumerate(_CELL_CODE))
    text = template.decode()
    text = text.replace('<html lang="en">', f'<html lang="{lang}">')
    text = text.replace("<!--CONNECT-->", f"<{connect_tag}></{connect_tag}>")
    text = text.replace("<!--CELLS-->", cells)
    text = text.replace("/*VARIANT*/{}", json.dumps(page))
    return text.encode()


def page_language(query: str, language: str, over_hl: bool = False) -> tuple[str, str]:
    """(the URL's ``hl`` as the page heeds it, the language the page speaks): ``hl=en`` (or
    ``pt``) wins, unless the account's language is set to win over it (``over_hl``)."""
    hl = "" if over_hl else (parse_qs(query).get("hl") or [""])[0].lower()
    return hl, hl if hl in LANGUAGES else language


# A cell's output: an iframe (cross-origin on Colab, same-origin here) that takes the keys
# pressed while the focus is in it, so that they never reach the notebook.
OUTPUT_FRAME = b"""<!DOCTYPE html><html><head><meta charset="utf-8"><style>
body { margin: 0; font-family: monospace; background: #fafafa; }</style></head>
<body tabindex="0"><pre>output of the cell</pre><script>
document.addEventListener('keydown', (e) => {
  fetch('/api/event', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({type: 'key', key: e.key, ctrl: e.ctrlKey, shift: e.shiftKey,
      cell: null, focus: 'output_frame', frame: location.search, trusted: e.isTrusted,
      t: Date.now()})}).catch(() => {});
  e.preventDefault(); e.stopPropagation();
}, true);
</script></body></html>"""


SIGN_IN_PAGE = b"""<!DOCTYPE html><html><head><meta charset="utf-8">
<title>Sign in - Google Accounts</title></head>
<body><h1>Sign in</h1><p>Sign in to continue to Colaboratory</p>
<div id="sign-in-overlay"><input type="email" placeholder="Email or phone"></div>
<script>fetch('/api/event', {method: 'POST', body: JSON.stringify({type: 'load',
 url: location.href, t: Date.now()})});</script></body></html>"""


class SimColab:
    def __init__(
        self,
        *,
        connect_delay: float = 0.3,
        gpu: bool = False,
        run_time: float = 1.0,
        variant: str = "",
        language: str = "en",
        noisy: bool = True,
        language_over_hl: bool = False,
    ):
        self.connect_delay = connect_delay
        self.variant = parse_variant(variant)
        self.language = _language(language)
        # Google pages heed ``hl=``; this switch makes the account's language win anyway, so
        # that a page the keep-alive cannot read in English can be shown (it must say so).
        self.language_over_hl = language_over_hl
        # The connect button's tooltip shows live RAM/Disk figures while connected, and
        # the page changes them every second, as Colab's does: the page is never quiet.
        self.noisy = noisy
        self.gpu_wanted = gpu
        self.run_time = run_time
        self.on_connect: Callable[[str], None] | None = None
        self.on_run_cell: Callable[[str], None] | None = None
        self.on_reset: Callable[[], None] | None = None
        self._cond = threading.Condition()
        self._version = 0
        self._vm_counter = itertools.count(1)
        self._dialog_ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []
        self._timers: list[threading.Timer] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._failing_loads = 0
        self._hang = False
        self.load_delay = 0.0  # seconds the server takes to answer a load of the notebook
        self.runs: list[str] = []
        # the scenario the page renders
        self.runtime = "fresh"  # fresh | connecting | connected | disconnected
        self.gpu = False
        self.vm_id: str | None = None
        self._new_vm_on_connect = True
        self.busy = False
        self.running: str | None = None  # the kind of the run in progress
        self.running_cells: list[int] = []
        self._run_generation = 0  # an interrupted run's timer must not end the next run
        self._dialogs: list[dict[str, Any]] = []  # bottom first, the newest on top
        self.recaptcha = False
        self._recaptcha_left: int | None = 0
        self._recaptcha_generation = 0
        self.gpu_limit = False
        self.too_many_sessions = False
        self.run_anyway = False
        self._run_anyway_accepted = False  # per page load
        self._pending_run: tuple[str, int | None] | None = None
        self.no_backend = False
        self.disallowed = False
        self.leave_guard = False
        self.signed_out = False
        self._page = resources.files("gateway.sim").joinpath("notebook.html").read_bytes()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> SimColab:
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sim-colab", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            for timer in self._timers:
                timer.cancel()
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SimColab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "SimColab.start() first"
        return int(self._server.server_address[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/notebook"

    def url_of(self, variant: str) -> str:
        """The notebook in markup ``variant`` (comma-separated names of ``VARIANTS``)."""
        parse_variant(variant)
        return f"{self.url}?variant={variant}"

    def page_for(self, query: str) -> bytes:
        """The page for a request's query string (``?variant=`` wins over ``self.variant``)."""
        asked = parse_qs(query).get("variant")
        features = parse_variant(asked[0]) if asked else self.variant
        hl, lang = page_language(query, self.language, self.language_over_hl)
        return render_page(self._page, features, hl=hl, lang=lang)

    # -- scenario controls --------------------------------------------------------------------

    def disconnect(
        self, *, dialog: bool = True, new_vm: bool = True, kind: str = "runtime_disconnected"
    ) -> None:
        """The runtime drops (idle timeout); Colab shows "Runtime disconnected" (``kind``:
        or another disconnect dialog, e.g. "disallowed") above whatever is open."""
        with self._changing():
            self._drop_runtime(new_vm)
            if dialog:
                self._open(kind)
            self._record({"type": "action", "action": "disconnect", "dialog": dialog and kind})

    def show_dialog(self, kind: str) -> None:
        """Open dialog ``kind`` (see ``_DIALOGS``) above the open ones."""
        with self._changing():
            self._open(kind)

    def show_dialogs(self, *kinds: str) -> None:
        """Open several at once, the first at the bottom, the last on top."""
        with self._changing():
            for kind in kinds:
                self._open(kind)

    def close_dialog(self, kind: str | None = None) -> None:
        """Close the dialogs of ``kind``; every dialog when None."""
        with self._changing():
            self._dialogs = [d for d in self._dialogs if kind is not None and d["kind"] != kind]

    def dialogs_open(self) -> list[str]:
        """The kinds of the open dialogs, bottom first (the last one is on top)."""
        with self._cond:
            return [d["kind"] for d in self._dialogs]

    @property
    def dialog(self) -> dict[str, Any] | None:
        """The dialog on top, or None."""
        with self._cond:
            return self._dialogs[-1] if self._dialogs else None

    def set_noisy(self, on: bool = True) -> None:
        with self._changing():
            self.noisy = on

    def set_language(self, language: str, *, over_hl: bool | None = None) -> None:
        """The account's language: the page speaks it unless its URL says ``hl=en`` (or
        ``over_hl``: whatever the URL says)."""
        with self._changing():
            self.language = _language(language)
            if over_hl is not None:
                self.language_over_hl = over_hl

    def set_cell_duration(self, seconds: float) -> None:
        """How long a cell's run lasts (its run button shows "Interrupt" meanwhile)."""
        with self._changing():
            self.run_time = seconds

    def set_no_backend(self, on: bool = True) -> None:
        """Connecting fails with "Failed to assign a backend" (nothing connects)."""
        with self._changing():
            self.no_backend = on

    def set_disallowed(self, on: bool = True) -> None:
        """Every run of a cell ends with the runtime disconnected "due to executing code
        that is disallowed in our free of charge tier"."""
        with self._changing():
            self.disallowed = on

    def show_recaptcha(self, times: int | None = 1) -> None:
        """Show the prompt; it comes back ``times - 1`` more times (None: forever)."""
        with self._changing():
            self.recaptcha = True
            self._recaptcha_left = None if times is None else times - 1

    def hide_recaptcha(self) -> None:
        """A person answered the prompt: it goes away and stays away."""
        with self._changing():
            self.recaptcha = False
            self._recaptcha_left = 0
            self._recaptcha_generation += 1

    def set_gpu_limit(self, on: bool = True) -> None:
        with self._changing():
            self.gpu_limit = on

    def set_too_many_sessions(self, on: bool = True) -> None:
        with self._changing():
            self.too_many_sessions = on

    def set_run_anyway(self, on: bool = True) -> None:
        """The first run of any cell on each page load asks "Run anyway" first."""
        with self._changing():
            self.run_anyway = on
            self._run_anyway_accepted = False

    def set_leave_guard(self, on: bool = True) -> None:
        with self._changing():
            self.leave_guard = on

    def set_busy(self, on: bool = True) -> None:
        with self._changing():
            self.busy = on

    def reset_vm(self) -> None:
        """Colab replaces the VM under a connected runtime (files and processes are gone)."""
        with self._changing():
            self.vm_id = self._next_vm()
            self._stop_running()
            self.busy = False
            self._record({"type": "action", "action": "reset_vm", "vm_id": self.vm_id})
        self._hook(self.on_reset)

    def sign_out(self) -> None:
        with self._changing():
            self.signed_out = True
            self._record({"type": "action", "action": "sign_out"})

    def sign_in(self) -> None:
        with self._changing():
            self.signed_out = False

    def hang_page(self) -> None:
        """The page's JavaScript spins forever once (a hung renderer)."""
        with self._changing():
            self._hang = True

    def set_load_delay(self, seconds: float) -> None:
        """Loads of the notebook take this long (a slow Pi, a slow link): a reload that the
        keep-alive waited for would keep it from its other windows (issue 26)."""
        with self._cond:
            self.load_delay = max(0.0, seconds)

    def fail_loads(self, count: int) -> None:
        with self._cond:
            self._failing_loads = count

    # -- what happened ------------------------------------------------------------------------

    def events(self, type: str | None = None, **match: Any) -> list[dict[str, Any]]:
        with self._cond:
            return [
                dict(e)
                for e in self._events
                if (type is None or e.get("type") == type)
                and all(e.get(k) == v for k, v in match.items())
            ]

    def count(self, type: str | None = None, **match: Any) -> int:
        return len(self.events(type, **match))

    def wait_for(
        self, predicate: Callable[[SimColab], Any], timeout: float = 10.0, what: str = ""
    ) -> Any:
        """Wait (bounded) until ``predicate(self)`` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"sim: {what or 'condition'} not met within {timeout}s; "
                        f"runtime={self.runtime} dialogs={[d['kind'] for d in self._dialogs]} "
                        f"last events={self._events[-8:]}"
                    )
                self._cond.wait(min(left, 0.2))

    # -- internals ----------------------------------------------------------------------------

    class _Changing:
        def __init__(self, sim: SimColab) -> None:
            self.sim = sim

        def __enter__(self) -> None:
            self.sim._cond.acquire()

        def __exit__(self, *exc: object) -> None:
            self.sim._version += 1
            self.sim._cond.notify_all()
            self.sim._cond.release()

    def _changing(self) -> SimColab._Changing:
        return SimColab._Changing(self)

    def _next_vm(self) -> str:
        return f"sim-vm-{next(self._vm_counter)}"

    def _dialog(self, kind: str) -> dict[str, Any]:
        if kind not in _DIALOGS:
            raise ValueError(f"unknown dialog {kind!r}; known: {', '.join(_DIALOGS)}")
        return {"id": next(self._dialog_ids), "kind": kind, **_DIALOGS[kind]}

    def _open(self, kind: str) -> None:
        """Colab shows one dialog of a kind: opening it again brings it to the top."""
        dialog = self._dialog(kind)
        self._dialogs = [d for d in self._dialogs if d["kind"] != kind] + [dialog]

    def _drop_runtime(self, new_vm: bool) -> None:
        self.runtime = "disconnected"
        self.busy = False
        self._stop_running()
        self._new_vm_on_connect = new_vm

    def _stop_running(self) -> None:
        self.running = None
        self.running_cells = []
        self._run_generation += 1

    def _record(self, event: dict[str, Any]) -> None:
        event.setdefault("server_t", time.time())
        self._events.append(event)
        self._cond.notify_all()

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        timer = threading.Timer(delay, fn)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _hook(self, hook: Callable[..., None] | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            log.exception("sim hook %r failed", hook)

    def state_json(self) -> dict[str, Any]:
        return {
            "v": self._version,
            "runtime": self.runtime,
            "gpu": self.gpu,
            "gpu_wanted": self.gpu_wanted,
            "vm_id": self.vm_id if self.runtime in ("connected",) else None,
            "busy": self.busy or self.running is not None,
            "running": self.running,
            "running_cells": self.running_cells,
            "dialogs": self._dialogs,
            "recaptcha": self.recaptcha,
            "noisy": self.noisy,
            "language": self.language,
            "leave_guard": self.leave_guard,
            "signed_out": self.signed_out,
            "hang": self._hang,
        }

    def _wait_state(self, since: int, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._version == since and self._server is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            state = self.state_json()
            self._hang = False  # one page hangs, not the next one
            return state

    def _page_event(self, event: dict[str, Any]) -> None:
        with self._cond:
            self._record(event)

    def _page_action(self, body: dict[str, Any]) -> None:
        action = body.get("action")
        after: list[Callable[[], None]] = []
        with self._changing():
            if action == "connect":
                after += self._connect(gpu=self.gpu_wanted)
            elif action == "dialog":
                after += self._dialog_answered(body)
            elif action == "recaptcha_dismiss":
                self.recaptcha = False
                self._record({"type": "action", "action": "recaptcha_dismissed"})
                left = self._recaptcha_left
                if left is None or left > 0:
                    self._recaptcha_left = None if left is None else left - 1
                    generation = self._recaptcha_generation
                    self._later(0.3, lambda: self._reshow_recaptcha(generation))
            elif action == "run":
                kind = str(body.get("kind"))
                cell = body.get("cell")
                cell = cell if isinstance(cell, int) else None
                if self.runtime != "connected":
                    self._record({"type": "action", "action": "run_while_disconnected"})
                elif self.run_anyway and not self._run_anyway_accepted:
                    self._pending_run = (kind, cell)
                    self._open("run_anyway")
                else:
                    after += self._run(kind, cell)
            elif action == "interrupt":
                cell = body.get("cell")
                if self.running is not None and cell in self.running_cells:
                    interrupted = {"action": "interrupted", "cell": cell, "kind": self.running}
                    self._record({"type": "action", **interrupted})
                    self._stop_running()
                else:
                    self._record({"type": "action", "action": "interrupt_while_idle", "cell": cell})
        for fn in after:
            fn()

    def _dialog_answered(self, body: dict[str, Any]) -> list[Callable[[], None]]:
        """A button of an open dialog (or Escape, ``button: "escape"``) closed it."""
        dialog = next((d for d in self._dialogs if d["id"] == body.get("dialog_id")), None)
        if dialog is None:
            self._record({"type": "action", "action": "stale_dialog_click"})
            return []
        choice = body.get("button")
        kind = dialog["kind"]
        self._dialogs = [d for d in self._dialogs if d is not dialog]
        self._record({"type": "action", "action": f"dialog_{kind}_{choice}"})
        if choice == "connect":
            return self._connect(gpu=self.gpu_wanted)
        if choice == "connect_cpu":
            return self._connect(gpu=False)
        if choice == "switch_cpu":  # the runtime becomes a CPU runtime: a GPU user's loss
            self.gpu = False
            self.gpu_wanted = False
            self._record({"type": "action", "action": "switched_to_cpu"})
        elif choice == "sign_in":
            self._record({"type": "action", "action": "sign_in_clicked"})
        elif kind == "run_anyway":
            pending, self._pending_run = self._pending_run, None
            if choice == "run_pending" and pending is not None:
                self._run_anyway_accepted = True
                return self._run(*pending)
            self._record({"type": "action", "action": "run_cancelled"})
        return []

    def _reshow_recaptcha(self, generation: int) -> None:
        with self._changing():
            if generation == self._recaptcha_generation:
                self.recaptcha = True

    def _connect(self, gpu: bool) -> list[Callable[[], None]]:
        if self.runtime in ("connected", "connecting"):
            self._record({"type": "action", "action": f"connect_while_{self.runtime}"})
            return []
        if self.too_many_sessions:
            self._open("too_many_sessions")
            return []
        if gpu and self.gpu_limit:
            self._open("gpu_limit")
            return []
        if self.no_backend:
            self._open("no_backend")
            self._record({"type": "action", "action": "no_backend"})
            return []
        self.runtime = "connecting"
        self._record({"type": "action", "action": "connecting"})
        self._later(self.connect_delay, lambda: self._connected(gpu))
        return []

    def _connected(self, gpu: bool) -> None:
        with self._changing():
            if self.runtime != "connecting":
                return
            self.runtime = "connected"
            self.gpu = gpu
            if self._new_vm_on_connect or self.vm_id is None:
                self.vm_id = self._next_vm()
            self._new_vm_on_connect = False
            vm_id = self.vm_id
            self._record({"type": "action", "action": "connected", "vm_id": vm_id, "gpu": gpu})
        self._hook(self.on_connect, vm_id)

    def _run(self, kind: str, cell: int | None = None) -> list[Callable[[], None]]:
        if cell is None:
            cell = 0 if kind == "first" else None
        self.running = kind
        self.running_cells = list(range(len(_CELL_CODE))) if kind == "all" else [cell or 0]
        self._run_generation += 1
        generation = self._run_generation
        self.runs.append(kind)
        self._record({"type": "action", "action": "run", "kind": kind, "cell": cell})
        self._later(self.run_time, lambda: self._run_done(generation))
        return [lambda: self._hook(self.on_run_cell, kind)]

    def _run_done(self, generation: int) -> None:
        with self._changing():
            if generation != self._run_generation:
                return  # interrupted, or another run took its place
            self._stop_running()
            if self.disallowed and self.runtime == "connected":
                self._drop_runtime(new_vm=True)
                self._open("disallowed")
                self._record({"type": "action", "action": "disconnect", "dialog": "disallowed"})

    def _page_loaded(self) -> None:
        """A new page load: "Run anyway" asks again on its first run."""
        with self._changing():
            self._run_anyway_accepted = False
            self._pending_run = None

    def _take_failing_load(self) -> bool:
        with self._cond:
            if self._failing_loads > 0:
                self._failing_loads -= 1
                return True
            return False


def _language(language: str) -> str:
    if language not in LANGUAGES:
        raise ValueError(f"sim page language {language!r}: known {', '.join(LANGUAGES)}")
    return language


def _make_handler(sim: SimColab) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("sim: " + format, *args)

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the page went away (reload, browser killed)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/api/state":
                since = int(parse_qs(url.query).get("v", ["-1"])[0])
                self._send(200, json.dumps(sim._wait_state(since)).encode())
            elif url.path in ("/notebook", "/"):
                if sim.load_delay:
                    time.sleep(sim.load_delay)  # this request's own thread
                if sim._take_failing_load():
                    # Not HTTP at all: Chromium shows its own error page (an empty answer
                    # would be retried by Chromium's network stack by itself).
                    self.close_connection = True
                    self.wfile.write(b"this is not HTTP\r\n\r\n")
                    return
                if sim.signed_out:
                    self.send_response(302)
                    self.send_header("Location", "/ServiceLogin?continue=/notebook")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                try:
                    page = sim.page_for(url.query)
                except ValueError as exc:
                    self._send(400, json.dumps({"error": str(exc)}).encode())
                    return
                sim._page_loaded()
                self._send(200, page, "text/html; charset=utf-8")
            elif url.path == "/outputframe":
                self._send(200, OUTPUT_FRAME, "text/html; charset=utf-8")
            elif url.path == "/ServiceLogin":
                self._send(200, SIGN_IN_PAGE, "text/html; charset=utf-8")
            elif url.path == "/favicon.ico":
                self._send(204, b"")
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._send(400, b'{"error": "bad json"}')
                return
            if not isinstance(body, dict):
                self._send(400, b'{"error": "expected an object"}')
                return
            if self.path == "/api/event":
                sim._page_event(body)
            elif self.path == "/api/action":
                sim._page_event({"type": "action_request", **body})
                sim._page_action(body)
            else:
                self._send(404, b'{"error": "not found"}')
                return
            self._send(200, b"{}")

    return Handler
