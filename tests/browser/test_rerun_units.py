"""Re-running the first cell: the pure parts (selector lists in the written order, what the
status says)."""

from __future__ import annotations

from gateway.browser.rerun import describe, selector_alternatives


def test_selector_alternatives_keep_the_written_order() -> None:
    # A selector list matches in document order, where <body> always comes first: the
    # re-run asks for each alternative in the order the user wrote them instead.
    assert selector_alternatives(".notebook-cell-list, .notebook-content, #main-content, body") == [
        ".notebook-cell-list",
        ".notebook-content",
        "#main-content",
        "body",
    ]


def test_selector_alternatives_keep_commas_inside_brackets_parentheses_and_quotes() -> None:
    text = ":is(.a, .b) > .c, [data-x=\"1,2\"], [title='x,y'] .d,,  "
    assert selector_alternatives(text) == [
        ":is(.a, .b) > .c",
        '[data-x="1,2"]',
        "[title='x,y'] .d",
    ]


def test_a_running_first_cell_is_reported_not_clicked() -> None:
    message = describe("", ["first_cell_editor"], False, False, running=True)
    assert message.startswith("re-run: first_cell_editor matched nothing")
    assert "browser.selectors.first_cell_editor" in message
    assert "still running" in message and "interrupt" in message and "not clicked" in message


def test_no_code_cell_names_its_selector() -> None:
    message = describe("", ["code_cell"], False, False)
    assert message.startswith("could not re-run the bootstrap: code_cell matched nothing")
    assert "browser.selectors.code_cell" in message
    assert "Run all is off (browser.rerun_fallback_all: false)" in message


def test_run_all_without_a_focus_inside_the_notebook_says_so() -> None:
    message = describe(
        "run_all",
        ["first_cell_editor", "run_button", "notebook_focus"],
        False,
        True,
        notebook_unfocusable=True,
    )
    assert "first_cell_editor matched nothing" in message
    assert "notebook_focus matched an element that does not take the keyboard focus" in message
    assert message.endswith("pressed Ctrl+F9 (Run all) anyway")
    fine = describe("run_all", ["first_cell_editor", "run_button"], True, True)
    assert "first_cell_editor matched an element that does not take the keyboard focus" in fine
    assert fine.endswith("pressed Run all instead (browser.rerun_fallback_all)")
