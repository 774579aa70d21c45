"""The simulated Colab page speaks the evidence (../shared/colab-dom.md), read with real
Chromium through the keep-alive's own probe (``colab_dom.PROBE_JS``).

These tests drive one browser directly (no keep-alive): they check what the page draws and
what the probe makes of it. What the keep-alive does on this page is tested in
tests/browser.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.browser import colab_dom
from gateway.browser.launch import Browser, launch
from gateway.config import BrowserConfig
from gateway.sim import SimColab

pytestmark = pytest.mark.slow

SEL = colab_dom.merged()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    browser = launch(BrowserConfig(), tmp_path_factory.mktemp("page"))
    yield browser
    browser.close()


@pytest.fixture
def sim() -> Iterator[SimColab]:
    with SimColab(gpu=True) as sim:
        yield sim


def open_page(browser: Browser, sim: SimColab, url: str = "") -> Any:
    driver = browser.driver
    before = sim.count("load")
    driver.get(url or sim.url)
    sim.wait_for(lambda s: s.count("load") > before, 10, "the page loaded")
    return driver


def probe(driver: Any) -> dict[str, Any]:
    return dict(driver.execute_script(colab_dom.PROBE_JS, SEL))


def wait_probe(driver: Any, sim: SimColab, check: Any, what: str) -> dict[str, Any]:
    """Probe until ``check(probe)`` holds (the page follows the scenario within ~50 ms)."""
    result: dict[str, Any] = {}

    def looked(_: SimColab) -> bool:
        result.update(probe(driver))
        return bool(check(result))

    sim.wait_for(looked, 10, what)
    return result


def connect(driver: Any, sim: SimColab) -> None:
    wait_probe(driver, sim, lambda p: p["connect"], "the connect button")
    driver.execute_script(colab_dom.CLICK_CONNECT_JS, SEL)
    sim.wait_for(lambda s: s.runtime == "connected", 10, "connected")


def test_dialogs_are_mwc_dialogs_titled_in_their_shadow_root(
    browser: Browser, sim: SimColab
) -> None:
    driver = open_page(browser, sim)
    sim.show_dialogs("runtime_disconnected", "notice")
    seen = wait_probe(driver, sim, lambda p: len(p["dialogs"]) == 2, "two dialogs")
    bottom, top = seen["dialogs"]
    assert bottom["tag"] == top["tag"] == "mwc-dialog"
    # the title exists only as the heading attribute, drawn into the shadow root's h2#title
    assert bottom["title"] == "Runtime disconnected"
    assert top["title"] == "Colab has a new feature"  # the newest is the last, on top
    assert "Runtime disconnected" not in bottom["text"]  # not in the light DOM
    assert "disconnected due to inactivity" in bottom["text"]
    assert bottom["buttons"] == [
        {"text": "Close", "slot": "secondaryAction", "primary": False},
        {"text": "Reconnect", "slot": "primaryAction", "primary": True},
    ]
    light = driver.execute_script(
        "const d = document.querySelector('body > mwc-dialog[open]');"
        "return [d.getAttribute('heading'), d.querySelector('[slot=headline]'),"
        " d.querySelector('md-text-button[slot=primaryAction]').getAttribute('dialogaction')]"
    )
    assert light == ["Runtime disconnected", None, "ok"]
    assert sim.dialogs_open() == ["runtime_disconnected", "notice"]
    # answering the one on top leaves the one below
    driver.execute_script(colab_dom.CLICK_DIALOG_JS, SEL, 1, "Later", False)
    sim.wait_for(lambda s: s.dialogs_open() == ["runtime_disconnected"], 5, "notice closed")


def test_the_new_dialog_kinds(browser: Browser, sim: SimColab) -> None:
    driver = open_page(browser, sim)
    connect(driver, sim)
    sim.show_dialogs("gpu_idle", "disallowed", "no_backend", "signed_out")
    seen = wait_probe(driver, sim, lambda p: len(p["dialogs"]) == 4, "four dialogs")
    by_title = {d["title"]: d for d in seen["dialogs"]}
    idle = by_title["You are connected to a GPU runtime, but not utilizing the GPU"]
    assert [b["text"] for b in idle["buttons"]] == ["Close", "Change to standard runtime"]
    disallowed = by_title["Runtime disconnected"]
    assert "disallowed in our free of charge tier" in disallowed["text"]
    assert "Failed to assign a backend" in by_title
    signed_out = by_title["You have been signed out"]
    assert "signed-out" in signed_out["classes"]
    assert [b["text"] for b in signed_out["buttons"]] == ["Sign in to continue"]
    assert seen["signed_out_element"] is True  # the selector names the in-page dialog
    # the GPU-idle notice's primary action switches the runtime to CPU: the page says so
    index = [d["title"] for d in seen["dialogs"]].index(idle["title"])
    driver.execute_script(colab_dom.CLICK_DIALOG_JS, SEL, index, "", False)
    sim.wait_for(lambda s: s.events("action", action="switched_to_cpu"), 5, "switched")
    assert sim.gpu is False


def test_connect_button_has_the_nested_structure_and_a_noisy_tooltip(
    browser: Browser, sim: SimColab
) -> None:
    driver = open_page(browser, sim)
    fresh = wait_probe(
        driver, sim, lambda p: p["connect"] and "T4" in p["connect"]["text"], "the button"
    )
    assert fresh["connect"]["tooltip"] == "Connect to a new runtime"
    assert "Connect" in fresh["connect"]["text"] and "T4" in fresh["connect"]["text"]
    structure = driver.execute_script(
        "const root = document.querySelector('#top-toolbar colab-connect-button').shadowRoot;"
        "const c = root.querySelector('colab-toolbar-button#connect.split-button');"
        "const inner = c.shadowRoot.querySelector('md-text-button#button');"
        "return [!!inner.shadowRoot.querySelector('button#button'),"
        " c.querySelector('div.connect-button-content').textContent.trim(),"
        " root.querySelector('#connect-dropdown').getAttribute('aria-label')];"
    )
    assert structure == [True, "Connect T4", "Additional connection options"]
    connect(driver, sim)
    first = wait_probe(driver, sim, lambda p: "Connected to" in p["connect"]["tooltip"], "tip")
    assert "(GPU)" in first["connect"]["tooltip"] and "RAM: " in first["connect"]["tooltip"]
    # the RAM figure changes every second while connected: the page is never quiet
    wait_probe(
        driver, sim, lambda p: p["connect"]["tooltip"] != first["connect"]["tooltip"], "noise"
    )
    sim.set_noisy(False)
    quiet = wait_probe(driver, sim, lambda p: p["connect"], "the tooltip")["connect"]["tooltip"]
    sim.set_busy(True)
    busy = wait_probe(driver, sim, lambda p: "Waiting" in p["connect"]["tooltip"], "busy")
    assert busy["connect"]["tooltip"] == "Waiting to finish the current execution."
    assert quiet != busy["connect"]["tooltip"]


def test_recaptcha_button_is_mwc_button_or_md_text_button(browser: Browser, sim: SimColab) -> None:
    for variant, tag in (("", "mwc-button"), ("recaptcha_md", "md-text-button")):
        driver = open_page(browser, sim, sim.url_of(variant) if variant else sim.url)
        sim.show_recaptcha(times=1)
        seen = wait_probe(driver, sim, lambda p: p["recaptcha"], "the prompt")
        assert seen["recaptcha_button"] is True
        inner = driver.execute_script(
            "const h = document.querySelector('colab-recaptcha-dialog');"
            "return h.shadowRoot.querySelector(arguments[0]).shadowRoot.querySelector('#button')"
            ".localName;",
            tag,
        )
        assert inner == "button"
        before = sim.count("action", action="recaptcha_dismissed")
        assert driver.execute_script(colab_dom.DISMISS_RECAPTCHA_JS, SEL) is True
        sim.wait_for(
            lambda s, n=before: s.count("action", action="recaptcha_dismissed") > n, 5, "dismissed"
        )


def test_language_follows_the_account_unless_the_url_says_hl_en(
    browser: Browser, tmp_path: Path
) -> None:
    with SimColab(language="pt") as sim:
        driver = open_page(browser, sim)
        seen = wait_probe(driver, sim, lambda p: p["connect"], "the connect button")
        assert seen["lang"] == "pt"
        assert seen["connect"]["tooltip"] == "Conectar a um novo ambiente de execução"
        assert "Conectar" in seen["connect"]["text"]
        sim.show_dialog("runtime_disconnected")
        seen = wait_probe(driver, sim, lambda p: p["dialogs"], "the dialog")
        assert seen["dialogs"][0]["title"] == "Ambiente de execução desconectado"
        assert [b["text"] for b in seen["dialogs"][0]["buttons"]] == ["Fechar", "Reconectar"]
        load = sim.events("load")[-1]
        assert load["query"] == "" and load["language"]

        driver = open_page(browser, sim, f"{sim.url}?hl=en")
        seen = wait_probe(driver, sim, lambda p: p["dialogs"], "the dialog")
        assert seen["lang"] == "en"
        assert seen["dialogs"][0]["title"] == "Runtime disconnected"
        assert sim.events("load")[-1]["query"] == "?hl=en"


def press(driver: Any, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    chain = ActionChains(driver).key_down(Keys.CONTROL)
    for key in keys:
        chain = chain.send_keys(key)
    chain.key_up(Keys.CONTROL).perform()


def test_the_first_cells_editor_is_lazy_and_a_later_one_is_built(
    browser: Browser, sim: SimColab
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = open_page(browser, sim)
    connect(driver, sim)
    first = driver.find_element(By.CSS_SELECTOR, ".cell.code[data-index='0']")
    assert first.find_elements(By.CSS_SELECTOR, "div.editor.lazy-editor")
    assert not first.find_elements(By.CSS_SELECTOR, "textarea.inputarea")
    # the document's first textarea belongs to the second cell: Ctrl+Enter there runs IT
    driver.execute_script("document.querySelector('.cell.code textarea.inputarea').focus()")
    press(driver, Keys.ENTER)
    sim.wait_for(lambda s: s.events("action", action="run"), 5, "a run")
    assert sim.events("action", action="run")[-1]["cell"] == 1 and sim.runs == ["cell"]
    # a click on the first cell's editor builds it; Ctrl+Enter in it runs the first cell
    first.find_element(By.CSS_SELECTOR, "div.editor.lazy-editor").click()
    sim.wait_for(lambda s: s.events("shown", what="editor_built", value=0), 5, "built")
    editor = first.find_element(By.CSS_SELECTOR, ".monaco .monaco-editor textarea.inputarea")
    driver.execute_script("arguments[0].focus()", editor)
    press(driver, Keys.ENTER)
    sim.wait_for(lambda s: s.runs == ["cell", "first"], 5, "the first cell ran")
    assert sim.events("action", action="run")[-1]["cell"] == 0


def test_the_run_button_interrupts_a_running_cell(browser: Browser, sim: SimColab) -> None:
    driver = open_page(browser, sim)
    connect(driver, sim)
    sim.set_cell_duration(30)
    click_run = "document.querySelector('colab-run-button').click()"
    driver.execute_script(click_run)
    seen = wait_probe(driver, sim, lambda p: p["running"], "the cell runs")
    assert seen["running"] is True
    marks = driver.execute_script(
        "const rb = document.querySelector('colab-run-button');"
        "return [!!rb.shadowRoot.querySelector('#stopSymbolMask'),"
        " rb.closest('.cell-execution').classList.contains('running'), rb.title]"
    )
    assert marks == [True, True, "Interrupt execution"]
    driver.execute_script(click_run)  # a second click on the running cell interrupts it
    sim.wait_for(lambda s: s.events("action", action="interrupted"), 5, "interrupted")
    assert sim.events("action", action="interrupted")[-1]["cell"] == 0
    assert sim.runs == ["first"] and sim.running is None


def test_run_anyway_on_the_first_run_of_any_cell_per_page_load(
    browser: Browser, sim: SimColab
) -> None:
    driver = open_page(browser, sim)
    connect(driver, sim)
    sim.set_run_anyway(True)
    sim.set_cell_duration(0.05)  # a click on a running cell would interrupt it
    driver.execute_script("document.querySelectorAll('colab-run-button')[1].click()")
    seen = wait_probe(driver, sim, lambda p: p["dialogs"], "Run anyway asked")
    assert [b["text"] for b in seen["dialogs"][0]["buttons"]] == ["Cancel", "Run anyway"]
    assert sim.runs == []  # nothing runs until it is answered
    driver.execute_script(colab_dom.CLICK_DIALOG_JS, SEL, 0, "Run anyway", False)
    sim.wait_for(lambda s: s.runs == ["cell"], 5, "the cell ran")
    driver.execute_script("document.querySelector('colab-run-button').click()")
    sim.wait_for(lambda s: s.runs == ["cell", "first"], 5, "no second question")
    sim.wait_for(lambda s: s.running is None, 5, "the run over")
    open_page(browser, sim)  # a new page load asks again
    driver.execute_script("document.querySelector('colab-run-button').click()")
    sim.wait_for(lambda s: s.dialogs_open() == ["run_anyway"], 5, "asked again")


def test_run_all_needs_the_focus_in_the_notebook_and_output_frames_keep_keys(
    browser: Browser, sim: SimColab
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = open_page(browser, sim)
    connect(driver, sim)
    driver.find_element(By.TAG_NAME, "body").click()  # lands on the Files panel
    press(driver, Keys.F9)
    sim.wait_for(lambda s: s.events("ignored"), 5, "Ctrl+F9 on body ignored")
    assert sim.events("ignored")[-1]["focus"] == "body"
    frame = driver.find_element(By.CSS_SELECTOR, 'iframe[src*="outputframe"]')
    driver.switch_to.frame(frame)
    driver.find_element(By.TAG_NAME, "body").click()
    press(driver, Keys.F9)
    driver.switch_to.default_content()
    sim.wait_for(lambda s: s.events("key", focus="output_frame", key="F9"), 5, "frame key")
    driver.find_element(By.CSS_SELECTOR, ".notebook-cell-list").click()
    press(driver, Keys.F9)
    sim.wait_for(lambda s: s.runs == ["all"], 5, "Run all ran")
    assert sim.running_cells == [0, 1]


def test_the_tooltips_live_figures_do_not_count_as_changes_but_a_disconnect_does(
    browser: Browser, sim: SimColab
) -> None:
    driver = open_page(browser, sim)
    connect(driver, sim)
    wait_probe(driver, sim, lambda p: "Connected to" in p["connect"]["tooltip"], "connected")
    # installs the page's change watcher (returns at once: it has seen nothing yet)
    driver.execute_async_script(colab_dom.WAIT_FOR_CHANGE_JS, SEL, 10, -1)
    start = probe(driver)
    tips = {start["connect"]["tooltip"]}
    # the RAM figure changes every second: wait for two changes of it
    wait_probe(driver, sim, lambda p: tips.add(p["connect"]["tooltip"]) or len(tips) >= 3, "RAM")
    assert probe(driver)["changes"] == start["changes"], "a RAM figure counted as a change"
    assert (
        driver.execute_async_script(colab_dom.WAIT_FOR_CHANGE_JS, SEL, 1500, start["changes"])
        == start["changes"]
    )
    sim.disconnect(dialog=False)  # a change of state still wakes the watcher at once
    after = driver.execute_async_script(colab_dom.WAIT_FOR_CHANGE_JS, SEL, 10_000, start["changes"])
    assert after > start["changes"]
    assert probe(driver)["connect"]["tooltip"] == "Click to connect"
