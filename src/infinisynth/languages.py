"""Language codes the pipeline uses (Magicoder's lower-case names) and how to show them."""

DISPLAY_NAMES = {
    "python": "Python",
    "javascript": "JavaScript",
    "typescript": "TypeScript",
    "java": "Java",
    "c": "C",
    "cpp": "C++",
    "sql": "SQL",
    "go": "Go",
    "rust": "Rust",
    "ruby": "Ruby",
    "php": "PHP",
    "shell": "Shell",
    "csharp": "C#",
    "swift": "Swift",
    "kotlin": "Kotlin",
}


def display_name(lang: str | None) -> str:
    """``cpp`` -> ``C++``; unknown languages are carried through as given."""
    if not lang:
        return "the same language"
    return DISPLAY_NAMES.get(lang, lang)


# Markdown fence tags for code blocks (what renderers and the lint gate recognise).
FENCE_TAGS = {"shell": "bash", "csharp": "csharp", "cpp": "cpp"}


def fence_tag(lang: str | None) -> str:
    return FENCE_TAGS.get(lang or "", lang or "")
