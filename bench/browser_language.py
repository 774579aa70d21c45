"""Which settings make Chromium speak English, on each engine, whatever its profile says.

For the full Chromium and the headless shell, each case starts a fresh profile (optionally
seeded with what a Chromium window set to Portuguese leaves: ``intl.accept_languages`` and
``intl.selected_languages`` ``pt-BR,pt``), optionally with a Portuguese environment, some
switches and chromedriver ``prefs``, loads a page on 127.0.0.1 and prints the
Accept-Language header the server received and what the page saw (``navigator.language``,
``navigator.languages``). docs/browser.md ("Language") quotes the result.

    python bench/browser_language.py [chromium] [headless-shell]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

PROGRAMS = {
    "chromium": "/usr/lib/chromium/chromium",
    "headless-shell": "/usr/lib/chromium/chromium-headless-shell",
}
PORTUGUESE_ENV = {"LANG": "pt_BR.UTF-8", "LANGUAGE": "pt_BR:pt", "LC_ALL": "pt_BR.UTF-8"}
PORTUGUESE_PROFILE = {"intl": {"accept_languages": "pt-BR,pt", "selected_languages": "pt-BR,pt"}}
ENGLISH_PREF = {"intl.accept_languages": "en-US,en"}
BOTH_PREFS = {**ENGLISH_PREF, "intl.selected_languages": "en-US,en"}

# name: (switches, chromedriver prefs, environment, profile preferences)
CASES: dict[str, tuple[list[str], dict[str, str] | None, dict[str, str], dict[str, Any] | None]] = {
    "new profile": ([], None, {}, None),
    "Portuguese environment": ([], None, PORTUGUESE_ENV, None),
    "Portuguese profile": ([], None, {}, PORTUGUESE_PROFILE),
    "Portuguese profile, --lang=en-US": (["--lang=en-US"], None, {}, PORTUGUESE_PROFILE),
    "Portuguese profile, pref accept_languages": ([], ENGLISH_PREF, {}, PORTUGUESE_PROFILE),
    "Portuguese profile, prefs accept+selected": ([], BOTH_PREFS, {}, PORTUGUESE_PROFILE),
    "Portuguese profile, --accept-lang=en-US,en": (
        ["--accept-lang=en-US,en"],
        None,
        {},
        PORTUGUESE_PROFILE,
    ),
    "Portuguese everything, --lang + --accept-lang": (
        ["--lang=en-US", "--accept-lang=en-US,en"],
        None,
        PORTUGUESE_ENV,
        PORTUGUESE_PROFILE,
    ),
}


class Recorder:
    def __init__(self) -> None:
        self.headers: list[str | None] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.headers.append(self.headers.get("Accept-Language"))
                body = b"<!DOCTYPE html><title>language</title>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"


def run(recorder: Recorder, engine: str, case: str) -> dict[str, Any]:
    switches, prefs, env_extra, profile_prefs = CASES[case]
    profile = tempfile.mkdtemp(prefix="language-")
    try:
        if profile_prefs is not None:
            os.makedirs(f"{profile}/Default")
            with open(f"{profile}/Default/Preferences", "w") as file:
                json.dump(profile_prefs, file)
        options = webdriver.ChromeOptions()
        options.binary_location = PROGRAMS[engine]
        args = ["--disable-gpu", f"--user-data-dir={profile}", *switches]
        if engine == "headless-shell":
            options.set_capability("browserName", "chrome-headless-shell")
        else:
            args.append("--headless=new")
        if os.geteuid() == 0:
            args.append("--no-sandbox")
        for arg in args:
            options.add_argument(arg)
        if prefs:
            options.add_experimental_option("prefs", prefs)
        service = Service(
            executable_path="/usr/bin/chromedriver",
            env={**os.environ, **env_extra},
            log_output=subprocess.DEVNULL,
        )
        driver = webdriver.Chrome(options=options, service=service)
        try:
            recorder.headers.clear()
            driver.get(recorder.url)
            language, languages = driver.execute_script(
                "return [navigator.language, navigator.languages]"
            )
        finally:
            driver.quit()
        return {
            "accept_language": recorder.headers[0] if recorder.headers else None,
            "navigator.language": language,
            "navigator.languages": languages,
        }
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    engines = sys.argv[1:] or list(PROGRAMS)
    recorder = Recorder()
    for engine in engines:
        for case in CASES:
            print(json.dumps({"engine": engine, "case": case, **run(recorder, engine, case)}))
    recorder.server.shutdown()


if __name__ == "__main__":
    main()
