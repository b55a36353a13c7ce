"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input (a file, a key, a value): the message says what, where and what to do."""


def first_line(exc: BaseException, typed: bool = False) -> str:
    """An error's text cut to its first line (200 characters at most; libraries such as
    tarfile write several), prefixed with its type's name when `typed`; the type's name alone
    where the text is empty."""
    lines = str(exc).strip().splitlines()
    text = lines[0].rstrip(":") if lines else ""
    if len(text) > 200:
        text = text[:197] + "..."
    if not text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}" if typed else text


def check_range(option: str, value, low, high) -> None:
    """Refuse `value` (of `option`, as the user wrote it) outside low..high; NaN too."""
    if not low <= value <= high:
        raise UserError(f"{option} {value}: need {low} to {high}")


def is_count(text: str) -> bool:
    """Whether `text` is a whole number in ASCII digits, as int() reads it (str.isdigit alone
    also takes '²', which int() refuses)."""
    return text.isascii() and text.isdigit()


def listing(names, shown: int = 3) -> str:
    """`a, b, c and 4 more`: the first `shown` names, and how many others."""
    names = list(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def plural(count: int, noun: str) -> str:
    """`1 image`, `2 images`, `2 classes`: the count and the noun in its number."""
    if count == 1:
        return f"1 {noun}"
    return f"{count} {noun}{'es' if noun.endswith(('s', 'x', 'sh', 'tch')) else 's'}"
