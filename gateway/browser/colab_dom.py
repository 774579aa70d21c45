"""Everything the gateway knows about Colab's page markup, in one place.

Colab changes its markup several times a year (see shared notes in docs/browser.md), so
every selector and every text the keep-alive looks for is a named entry of ``DEFAULTS``
(gateway/colab_selectors.py, where the config checks the names too) and each one can be
replaced from the config file::

    browser:
      selectors:
        connect_host: colab-connect-button
        text_still_there: "Are you still there|Still there?"

Selectors are CSS (they never cross a shadow root: the scripts below walk the roots step
by step). Texts are case-insensitive substrings; ``|`` separates alternatives.

The page is read by ONE script (``PROBE_JS``) that returns raw facts; deciding what those
facts mean is pure Python (``page_state.py``), so it is unit-tested without a browser.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.colab_selectors import DEFAULTS

__all__ = ["DEFAULTS", "UnknownSelector", "alternatives", "contains_any", "merged"]


class UnknownSelector(ValueError):
    pass


def merged(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The defaults with the config's overrides applied; unknown names are an error."""
    result = dict(DEFAULTS)
    for name, value in (overrides or {}).items():
        if name not in DEFAULTS:
            known = ", ".join(sorted(DEFAULTS))
            raise UnknownSelector(
                f"browser.selectors.{name}: no such selector; known names: {known}"
            )
        result[name] = value
    return result


def alternatives(text: str) -> list[str]:
    return [part.strip().lower() for part in text.split("|") if part.strip()]


def contains_any(haystack: str | None, text: str) -> bool:
    low = (haystack or "").lower()
    return any(part in low for part in alternatives(text))


# Shared helpers for every script below. ``S`` is the selector dict passed as argument 0.
_LIB = r"""
const S = arguments[0];
const q = (root, sel) => {
  try { return root ? root.querySelector(sel) : null; } catch (e) { return null; }
};
const qa = (root, sel) => {
  try { return root ? Array.from(root.querySelectorAll(sel)) : []; } catch (e) { return []; }
};
const alts = (t) => (t || '').split('|').map(s => s.trim().toLowerCase()).filter(Boolean);
const has = (text, t) => {
  const low = (text || '').toLowerCase();
  return alts(t).some(a => low.includes(a));
};
const txt = (el) => {
  if (!el) return '';
  const inner = el.innerText !== undefined && el.innerText !== '' ? el.innerText : el.textContent;
  return (inner || '').trim();
};
const connectEl = () => {
  const host = q(document, S.connect_host);
  return host ? q(host.shadowRoot, S.connect_button) : null;
};
const dialogs = () => qa(document, S.dialog).filter(d => d.isConnected);
const buttonsOf = (d) => {  // outermost matches only (a md-text-button, not its inner button)
  const all = qa(d, S.dialog_buttons);
  return all.filter(b => !all.some(o => o !== b && o.contains(b)));
};
// mwc-dialog draws its `heading` attribute into its shadow root's h2#title
const titleOf = (d) => txt(q(d.shadowRoot, 'h2#title, #title')) ||
                       (d.getAttribute('heading') || '').trim() || txt(q(d, S.dialog_title));
const recaptchaEl = () => {
  const host = q(document, S.recaptcha_host);
  if (!host) return null;
  const btn = q(host.shadowRoot, S.recaptcha_button) || q(host, S.recaptcha_button);
  if (!btn) return host;
  return q(btn.shadowRoot, S.recaptcha_inner) || btn;
};
"""

PROBE_JS = (
    _LIB
    + r"""
const c = connectEl();
const host = q(document, S.connect_host);
const matches = (el, sel) => { try { return el.matches(sel); } catch (e) { return false; } };
const shown = (el) => el.getClientRects().length > 0 &&
                      getComputedStyle(el).visibility !== 'hidden';
const open = dialogs();
// An open dialog that the `dialog` selector does not match: Colab changed its dialogs.
const stray = qa(document, 'dialog[open], [open], [opened], [aria-modal=true], [role=alertdialog]')
  .filter(el => el.localName === 'dialog' || el.localName.endsWith('-dialog') ||
                el.getAttribute('aria-modal') === 'true' ||
                el.getAttribute('role') === 'alertdialog')
  .filter(el => !matches(el, S.dialog) && !matches(el, S.recaptcha_host) && shown(el))
  .filter(el => !open.some(d => d.contains(el) || el.contains(d)));
const rc = q(document, S.recaptcha_host);
let running = false;
for (const rb of qa(document, S.run_button)) {
  if (q(rb.shadowRoot, S.running_marker)) { running = true; break; }
}
const vmEl = q(document, S.vm_id);
const out = {
  url: location.href,
  title: document.title,
  ready: document.readyState,
  error_page: location.href.startsWith('chrome-error:') ||
              !!document.getElementById('main-frame-error'),
  page_marker: !!q(document, S.page_marker),
  connect: c ? {
    tooltip: c.getAttribute(S.connect_tooltip_attr) || '',
    text: txt(c),
    disabled: !!(c.disabled || c.hasAttribute('disabled')),
  } : null,
  // in document order: the last one is on top
  dialogs: open.map(d => ({
    title: titleOf(d),
    text: txt(d).slice(0, 2000),
    buttons: buttonsOf(d).map(b => ({
      text: txt(b), slot: b.getAttribute('slot') || '', primary: !!b.matches(S.dialog_primary),
    })),
    tag: d.localName,
    classes: typeof d.className === 'string' ? d.className : '',
  })),
  lang: document.documentElement.lang || '',
  recaptcha: !!q(document, S.recaptcha_host),
  running: running,
  vm_id: vmEl ? vmEl.getAttribute(S.vm_id_attr) : null,
  signed_out_element: !!q(document, S.signed_out_element),
  body_excerpt: c ? '' : txt(document.body).slice(0, 3000),
  changes: window.__cgw ? window.__cgw.n : -1,
  // for the selector canary (canary.py): which structures this page still has
  found: {
    page_marker: !!q(document, S.page_marker),
    connect_host: !!host,
    connect_button: host ? !!c : null,
    connect_tooltip_attr: c ? c.hasAttribute(S.connect_tooltip_attr) : null,
    run_button: qa(document, S.run_button).length > 0,
    first_cell_editor: !!q(document, S.first_cell_editor),
    notebook_focus: !!q(document, S.notebook_focus),
  },
  stray_dialogs: stray.map(el => el.localName),
  recaptcha_button: rc ? !!(q(rc.shadowRoot, S.recaptcha_button) || q(rc, S.recaptcha_button))
                      : null,
};
return out;
"""
)

CLICK_CONNECT_JS = (
    _LIB
    + r"""
const c = connectEl();
if (!c) return false;
c.click();
return true;
"""
)

# arguments[1]: index of the dialog, arguments[2]: '|'-separated button texts, or '' for the
# primary button; arguments[3]: fall back to the primary button when no text matches.
CLICK_DIALOG_JS = (
    _LIB
    + r"""
const d = dialogs()[arguments[1]];
if (!d) return null;
const want = arguments[2];
const buttons = buttonsOf(d);
const primary = () => buttons.find(b => b.matches(S.dialog_primary));
const b = want
  ? (buttons.find(b => has(txt(b), want)) || (arguments[3] ? primary() : null))
  : primary();
if (!b) return null;
const label = txt(b);
b.click();
return label;
"""
)

# The first code cell: every re-run lookup is scoped to it. Colab builds editors lazily, so
# the document's first editor may belong to a later cell, which would then run instead.
_FIRST_CELL = r"""
const cell = q(document, S.code_cell);
const isRunning = (c) => {  // the run button's stop symbol, or the cell's running class
  const rb = q(c, S.run_button);
  return !!(q(rb && rb.shadowRoot, S.running_marker) || q(c, S.running_marker));
};
"""

# Focus the first code cell's editor for Ctrl+Enter. Returns "ok"; "no_cell" (code_cell
# matches nothing); the cell's lazy editor placeholder (an element: the caller clicks it,
# as a person would, so that Colab builds the editor, and asks again); "missing" (the cell
# has neither); or "unfocusable" (first_cell_editor matches an element that does not take
# the focus, e.g. Colab's `div.inputarea` container instead of Monaco's textarea).
FOCUS_EDITOR_JS = (
    _LIB
    + _FIRST_CELL
    + r"""
if (!cell) return 'no_cell';
const el = q(cell, S.first_cell_editor);
if (!el) {
  const lazy = q(cell, S.lazy_editor);
  if (!lazy) return 'missing';
  lazy.scrollIntoView({block: 'center'});
  return lazy;
}
el.scrollIntoView({block: 'center'});
el.focus();
const active = document.activeElement;
return active && (active === el || el.contains(active)) ? 'ok' : 'unfocusable';
"""
)

# Click the first code cell's run button (Colab runs the cell on a click on the host
# element) - unless the cell is running: then the same click interrupts it. Returns
# "clicked", "running", "no_cell" or "missing".
CLICK_RUN_BUTTON_JS = (
    _LIB
    + _FIRST_CELL
    + r"""
if (!cell) return 'no_cell';
const el = q(cell, S.run_button);
if (!el) return 'missing';
if (isRunning(cell)) return 'running';
el.scrollIntoView({block: 'center'});
el.click();
return 'clicked';
"""
)

# Put the keyboard focus inside the notebook for Run all (Ctrl+F9): on <body>, or inside a
# cell's output (an iframe, which swallows keys), Colab's shortcut never arrives.
# arguments[1]: the notebook_focus alternatives, in the order of preference (a selector list
# would match in document order, where <body> always comes first); then the first code
# cell and its editor. Returns "ok", "unfocusable" (something matched, nothing took the
# focus) or "missing".
FOCUS_NOTEBOOK_JS = (
    _LIB
    + _FIRST_CELL
    + r"""
const inside = (el) => {
  const a = document.activeElement;
  return !!a && a !== document.body && a !== document.documentElement &&
         a.localName !== 'iframe' && a.localName !== 'frame' && (a === el || el.contains(a));
};
const candidates = [];
for (const sel of arguments[1]) candidates.push(...qa(document, sel));
if (cell) candidates.push(cell, q(cell, S.first_cell_editor));
let found = false;
for (const el of candidates) {
  if (!el || el === document.body || el === document.documentElement) continue;
  found = true;
  el.focus({preventScroll: true});
  if (inside(el)) return 'ok';
}
return found ? 'unfocusable' : 'missing';
"""
)

# Load the notebook again from its URL (arguments[0]), after this script has returned. Assigning
# location.href a URL that differs from the current one only after '#' (Colab's links carry
# `#scrollTo=...`) is a jump within the page, not a load: then put the URL in place and reload.
LOAD_AGAIN_JS = r"""
const url = arguments[0];
const page = (u) => u.split('#')[0];
setTimeout(() => {
  if (page(location.href) === page(url)) {
    history.replaceState(history.state, '', url);
    location.reload();
  } else {
    location.href = url;
  }
}, 0);
"""

DISMISS_RECAPTCHA_JS = (
    _LIB
    + r"""
const el = recaptchaEl();
if (!el) return false;
el.click();
return true;
"""
)

# Waits (asynchronously, inside the page) until the DOM changes or the timeout passes, and
# returns the change counter. The observer watches the document and the shadow root of the
# connect button, where the connection state (its tooltip) lives; a document-level observer
# does not see inside shadow roots. arguments: selectors, timeout ms, last counter seen.
#
# Colab's page is never quiet: while connected, the tooltip's RAM/Disk figures and the
# resource bars change every few seconds. A batch of mutations made only of such changes
# (the tooltip with the same words once its figures are masked, anything inside
# `resource_display`) neither counts nor wakes the keep-alive; any other mutation does, so
# no change of state is missed (the tooltip's words change with the state).
WAIT_FOR_CHANGE_JS = (
    _LIB
    + r"""
const done = arguments[arguments.length - 1];
const timeoutMs = arguments[1], seen = arguments[2];
if (!window.__cgw) {
  const w = {n: 0, waiters: [], roots: new WeakSet(), ignored: 0};
  const figures = (t) => (t || '').replace(/[0-9]+(?:[.,][0-9]+)*/g, '#');
  const insideResources = (node) => {
    const el = node && (node.nodeType === 1 ? node : node.parentElement);
    if (!el || !el.closest) return false;
    let box = null;
    try { box = el.closest(S.resource_display); } catch (e) { return false; }
    return !!box && box !== el;  // the box itself appearing or hiding is a change
  };
  const noise = (r) => {
    if (r.type === 'attributes' && r.attributeName === S.connect_tooltip_attr) {
      return figures(r.oldValue) === figures(r.target.getAttribute(r.attributeName));
    }
    return insideResources(r.target);
  };
  w.obs = new MutationObserver((records) => {
    if (records.every(noise)) { w.ignored++; return; }
    w.n++;
    const ws = w.waiters.splice(0);
    // a short settle time: a dialog appears as several mutations in a row
    if (ws.length) setTimeout(() => ws.forEach(f => f()), 30);
  });
  w.watch = (root) => {
    if (root && !w.roots.has(root)) {
      w.roots.add(root);
      w.obs.observe(root, {subtree: true, childList: true, attributes: true,
                           attributeOldValue: true, characterData: true});
    }
  };
  window.__cgw = w;
}
const w = window.__cgw;
w.watch(document);
const host = q(document, S.connect_host);
if (host) { w.watch(host.shadowRoot); }
if (w.n !== seen) { done(w.n); return; }
let finished = false;
const finish = () => { if (!finished) { finished = true; done(w.n); } };
setTimeout(finish, timeoutMs);
w.waiters.push(finish);
"""
)

# The same watch as WAIT_FOR_CHANGE_JS, as a WebDriver BiDi preload script (change_feed.py):
# it runs in every window before the page's own scripts, on every load, and tells the
# keep-alive through its channel (``send``) that the window changed, so that one thread
# hears every window at once without switching to any. The same noise is ignored (the
# tooltip's figures, the resource bars). attachShadow is wrapped to watch the connect
# button's shadow root from the moment it exists (a document-level observer does not see
# inside it); changes within CHANGE_FEED_SETTLE_MS make one message (a dialog appears as
# several mutations in a row). Frames are left alone: cell outputs are cross-origin frames.
# The selectors are written into the function (a preload script takes only channels).
CHANGE_FEED_SETTLE_MS = 30
CHANGE_FEED_JS = r"""
(send) => {
  if (window !== window.top) return;
  const S = %(selectors)s;
  const figures = (t) => (t || '').replace(/[0-9]+(?:[.,][0-9]+)*/g, '#');
  const insideResources = (node) => {
    const el = node && (node.nodeType === 1 ? node : node.parentElement);
    if (!el || !el.closest) return false;
    let box = null;
    try { box = el.closest(S.resource_display); } catch (e) { return false; }
    return !!box && box !== el;
  };
  const noise = (r) => {
    if (r.type === 'attributes' && r.attributeName === S.connect_tooltip_attr) {
      return figures(r.oldValue) === figures(r.target.getAttribute(r.attributeName));
    }
    return insideResources(r.target);
  };
  const roots = new WeakSet();
  let timer = null;
  const changed = () => {
    if (timer === null) timer = setTimeout(() => { timer = null; send(1); }, %(settle)d);
  };
  const isHost = (el) => { try { return el.matches(S.connect_host); } catch (e) { return false; } };
  const obs = new MutationObserver((records) => {
    watchHost();
    if (!records.every(noise)) changed();
  });
  const watch = (root) => {
    if (root && !roots.has(root)) {
      roots.add(root);
      obs.observe(root, {subtree: true, childList: true, attributes: true,
                         attributeOldValue: true, characterData: true});
    }
  };
  const watchHost = () => {
    let host = null;
    try { host = document.querySelector(S.connect_host); } catch (e) { return; }
    if (host) watch(host.shadowRoot);
  };
  const attach = Element.prototype.attachShadow;
  Element.prototype.attachShadow = function (...args) {
    const root = attach.apply(this, args);
    if (isHost(this)) watch(root);
    return root;
  };
  watch(document);
  changed();  // a new document is worth a look
}
"""


def change_feed_js(sel: Mapping[str, str]) -> str:
    """CHANGE_FEED_JS with the selectors written in (JSON is a JavaScript expression)."""
    import json

    return CHANGE_FEED_JS % {
        "selectors": json.dumps(dict(sel)),
        "settle": CHANGE_FEED_SETTLE_MS,
    }


# Inserted before a reload so the keep-alive can tell the new document from the old one.
MARK_DOCUMENT_JS = "window.__cgwMark = arguments[0]; return true;"
READ_MARK_JS = "return [window.__cgwMark || null, document.readyState];"

# Close a dialog the keep-alive does not answer (the GPU-idle notice, an unknown dialog, a
# refusal it has read): a button that is NOT the primary action, preferring one whose text
# says close, then the secondary action; with neither, "escape" (the caller then presses a
# real Escape key, which closes an mwc-dialog). Never the primary action: on the GPU-idle
# notice it switches the runtime to CPU, on an unknown dialog it may do anything.
# arguments[1]: the dialog's index, arguments[2]: '|'-separated close texts,
# arguments[3]: its title as the probe read it ('' = trust the index): dialogs above it may
# have closed since, so the index alone could name another dialog.
CLOSE_DIALOG_JS = (
    _LIB
    + r"""
const all = dialogs();
const want = arguments[3];
const named = (x) => titleOf(x).slice(0, 200) === want;  // as the probe read it
let d = all[arguments[1]];
if (want && (!d || !named(d))) d = all.find(named);
if (!d) return null;
const isPrimary = (b) => {
  try {
    return b.matches(S.dialog_primary) || b.getAttribute('slot') === 'primaryAction';
  } catch (e) { return false; }
};
const others = buttonsOf(d).filter(b => !isPrimary(b));
const b = others.find(b => has(txt(b), arguments[2])) ||
          others.find(b => b.getAttribute('slot') === 'secondaryAction');
if (b) {
  const label = txt(b);
  b.click();
  return 'clicked:' + label;
}
// Escape closes the dialog on top: this one's turn comes when those above it are gone.
if (d !== all[all.length - 1]) return 'covered';
// Escape reaches the dialog's keydown handler through the top document: take the focus
// out of an editor or an output frame first.
if (document.activeElement && document.activeElement !== document.body) {
  document.activeElement.blur();
}
return 'escape';
"""
)
