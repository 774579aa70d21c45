"""The CSS selectors and page texts by which the browser keep-alive reads Colab's notebook.

Data only, so that the config can check ``browser.selectors`` names without importing the
browser component; gateway/browser/colab_dom.py says how they are used and overridden.
"""

from __future__ import annotations

DEFAULTS: dict[str, str] = {
    # -- structures ------------------------------------------------------------------------
    # connect/reconnect: host element -> its shadowRoot -> the button (tooltip = state)
    "connect_host": "colab-connect-button",
    "connect_button": "#connect",
    "connect_tooltip_attr": "tooltiptext",
    # the live RAM/Disk bars (only while connected): their figures change every few
    # seconds, which is not a change of state (the change watcher ignores them)
    "resource_display": "#connect-button-resource-display, colab-usage-display",
    # generic dialogs: mwc-dialog in every dated 2024-2026 source (its `heading` attribute
    # is drawn into the shadow root's h2#title, read first); md-dialog and paper-dialog as
    # fallbacks. Matches come in document order: the last open one is on top.
    "dialog": "mwc-dialog[open], md-dialog[open], paper-dialog[opened]",
    "dialog_title": "[slot=headline], #title, h2",
    "dialog_buttons": "md-text-button, md-filled-button, md-outlined-button, mwc-button, "
    "paper-button, button",
    "dialog_primary": "[slot=primaryAction], [dialogaction=ok], #ok",
    # reCAPTCHA: host -> shadowRoot -> button host -> shadowRoot -> the clickable element
    "recaptcha_host": "colab-recaptcha-dialog",
    # mwc-button since May 2025 (md-text-button between 2024-12 and 2025-05): accept both
    "recaptcha_button": "mwc-button, md-text-button",
    "recaptcha_inner": "#button",
    # cells: a running cell's run button shows a stop symbol in its shadowRoot (the re-run
    # also looks in the cell itself: `.cell-execution.running`)
    "run_button": "colab-run-button",
    "running_marker": "#stopSymbolMask, .cell-execution.running",
    # The code editor is Monaco: its input is a 1-pixel `textarea.inputarea`; a bare
    # `.inputarea` could also hit a container div around it, which cannot take the focus.
    # Newer Monaco builds use an EditContext element instead.
    "first_cell_editor": ".cell.code textarea.inputarea, .cell.code .native-edit-context, "
    ".cell.code textarea",
    # Where Run all's focus goes. Only the notebook itself: a selector list matches in
    # document order, where an outer fallback such as `body` comes first (the re-run tries
    # the alternatives in the order written and never takes <body>).
    "notebook_focus": ".notebook-cell-list",
    # the re-run's cell (first_cell_editor, lazy_editor and run_button are looked for
    # inside its first match) and the placeholder Colab draws until that cell's editor is
    # built (a click builds it)
    "code_cell": ".cell.code",
    "lazy_editor": ".lazy-editor",
    # present on every loaded notebook page; its absence long after load = failed load
    "page_marker": "#top-toolbar, colab-connect-button",
    # an element whose attribute names the VM; real Colab has none (heuristic used then)
    "vm_id": "[data-colab-vm-id]",
    "vm_id_attr": "data-colab-vm-id",
    # signed out: a URL pattern (regular expression) or a sign-in element
    "signed_out_url": r"accounts\.google\.com|/ServiceLogin|/signin/",
    # (the in-page dialog: an mwc-dialog whose class contains signed-out)
    "signed_out_element": "#sign-in-overlay, colab-sign-in-button, [open][class*=signed-out]",
    # -- texts (case-insensitive substrings, '|' separates alternatives) ---------------------
    "text_connected": "Connected to",
    "text_gpu": "(GPU)|GPU backend",
    "text_busy": "Waiting to finish the current execution",
    "text_needs_connect": "Click to connect|Connect to a new runtime|Connect to a hosted runtime",
    "text_connecting": "Connecting|Allocating|Initializing",
    "text_runtime_disconnected": "Runtime disconnected",
    "text_reconnect": "Reconnect",
    "text_still_there": "Are you still there|Are you still here",
    "text_gpu_limit": "Cannot connect to GPU backend|usage limits",
    "text_connect_without_gpu": "Connect without GPU",
    "text_too_many_sessions": "too many active sessions|Terminate other sessions",
    "text_run_anyway": "Run anyway",
    "text_close": "Close|Cancel|Dismiss",
    "text_signed_out": "Sign in to continue|Sign in to use Colab|You have been signed out",
    # -- texts of the dialogs the keep-alive closes or stops at (gateway/browser/page_state.py)
    # an open dialog (its texts and its class) saying the account was signed out
    "text_signed_out_dialog": "signed-out|signed out|Sign in to continue",
    # a disconnect for code disallowed without a paid plan: stop, never reconnect
    "text_disallowed": "disallowed in our free of charge tier|code that is disallowed|"
    "disallowed code",
    "text_no_backend": "Failed to assign a backend|Unable to assign a backend|"
    "Cannot assign a backend",
    # "connected to a GPU runtime, but not utilizing the GPU": closed, never its primary
    # action (which switches the runtime to CPU)
    "text_gpu_idle": "not utilizing the GPU|not utilising the GPU|not using the GPU|"
    "not utilizing a GPU",
}
