"""`--interactive`: pick the module types to scan from a checklist, as the reference tool does.

The reference shows every type checked in a dialog and lets you uncheck some; here the checklist is
printed on stderr and answered on one line at a time (numbers and ranges toggle), with nothing beyond
the terminal: no extra dependency.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UsageError


def parse_toggles(answer: str, count: int) -> set[int] | str:
    """The 1-based item numbers an answer toggles, or `"all"` / `"none"`.

    `"2 5-7"` and `"2,5-7"` -> {2, 5, 6, 7}. Raises ValueError (with the reason) for anything else.
    """
    words = answer.replace(",", " ").split()
    if len(words) == 1 and words[0].lower() in ("all", "none"):
        return words[0].lower()
    chosen: set[int] = set()
    for word in words:
        first, dash, last = word.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{word!r} is not a number or a range like 3-5")
        low, high = int(first), int(last) if dash else int(first)
        if not 1 <= low <= high <= count:
            raise ValueError(f"{word!r} is outside 1-{count}")
        chosen.update(range(low, high + 1))
    return chosen


def choose_types(
    model: str,
    types: dict[str, dict],
    checked: set[str],
    *,
    ask: Callable[[str], str],
    say: Callable[[str], None],
) -> set[str]:
    """Show the checklist of `types` (type -> {"count", "shapes"}) and return the checked ones.

    Args:
        checked: the types checked at first (the flags' choice).
        ask: reads one answer after a prompt; `say`: prints one line.

    Raises:
        UsageError: the input ended before an answer.
    """
    names = list(types)
    state = {name for name in names if name in checked}
    width = max(len(name) for name in names)
    while True:
        say(f"module types of {model} (checked: scanned and selected from)")
        for number, name in enumerate(names, start=1):
            shapes = ", ".join("x".join(str(d) for d in shape) for shape in types[name]["shapes"])
            mark = "x" if name in state else " "
            say(f"  [{mark}] {number:>3}  {name:<{width}}  {types[name]['count']:>4}  {shapes}")
        try:
            answer = ask("toggle by number or range (e.g. 2 5-7), 'all' or 'none'; Enter to go on: ")
        except EOFError as err:
            raise UsageError("--interactive: the input ended before the types were chosen") from err
        if not answer.strip():
            if state:
                return state
            say("check at least one type")
            continue
        try:
            toggles = parse_toggles(answer, len(names))
        except ValueError as err:
            say(str(err))
            continue
        if toggles == "all":
            state = set(names)
        elif toggles == "none":
            state = set()
        else:
            state ^= {names[number - 1] for number in toggles}
