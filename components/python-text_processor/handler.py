"""python-text_processor: counts and case changes on a text.

params: {"action": "count_words" | "count_chars" | "uppercase" | "lowercase", "text": s}
result: {"result": ...}
"""

ACTIONS = {
    "count_words": lambda text: len(text.split()),
    "count_chars": len,
    "uppercase": str.upper,
    "lowercase": str.lower,
}


def handler(event):
    params = event["params"]
    action = params.get("action")
    text = params.get("text")
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    if not isinstance(text, str):
        raise TypeError("text must be a string")
    return {"result": ACTIONS[action](text)}
