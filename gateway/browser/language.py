"""English, whatever the Google account's language: every text the keep-alive looks for
(gateway/colab_selectors.py) is English, and Colab translates its dialogs and tooltips.

Two layers, because either alone can lose:

- the notebook's URL carries ``hl=en`` (Google pages take the interface language from
  it, over the account's setting); it is kept on every reload, since a reload navigates
  to the same URL;
- Chromium itself runs in English: ``--lang=en-US`` (the interface locale, which also
  seeds a new profile's languages) and ``--accept-lang=en-US,en`` (the Accept-Language
  header and ``navigator.language``). The profile's own language list cannot be trusted:
  ``colab-gateway login`` signs in with a Chromium a person may have set to Portuguese,
  and the profile keeps it. Measured on Debian's Chromium 156 and its headless shell
  (docs/browser.md, "Language"): ``--accept-lang`` wins over the profile on both; the
  ``intl.accept_languages`` preference alone does not (the full Chromium reads
  ``intl.selected_languages``, the shell reads no preference at all).
"""

from __future__ import annotations

ENGLISH_ARGS = ("--lang=en-US", "--accept-lang=en-US,en")


def english_url(url: str) -> str:
    """``url`` with ``hl=en`` in its query: every other parameter and the fragment kept as
    written (order and encoding), an ``hl`` of another language replaced in its place."""
    before_fragment, hash_mark, fragment = url.partition("#")
    address, _, query = before_fragment.partition("?")
    parts = query.split("&") if query else []
    kept: list[str] = []
    placed = False
    for part in parts:
        if part.partition("=")[0] == "hl":
            if not placed:  # the first hl= is where the language goes; repeats are dropped
                kept.append("hl=en")
                placed = True
            continue
        kept.append(part)
    if not placed:
        kept.append("hl=en")
    return f"{address}?{'&'.join(kept)}{hash_mark}{fragment}"
