"""``servekit completion bash``: a bash completion script made from an argparse parser.

A core module of its own, so that the parser (servekit/cli.py, the composition root) can hand
itself in; the commands never import the CLI that dispatches to them.
"""

from __future__ import annotations

import argparse


def _words(parser: argparse.ArgumentParser) -> tuple[list[str], dict[str, argparse.ArgumentParser]]:
    """A parser's option strings and its subcommands."""
    options = [s for action in parser._actions for s in action.option_strings]
    subs: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            subs.update(action.choices)
    return options, subs


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for ``parser``: subcommands, their flags and choices, from argparse."""
    cases = []

    def walk(prefix: str, p: argparse.ArgumentParser) -> None:
        options, subs = _words(p)
        choices = [c for a in p._actions if a.choices and not isinstance(a, argparse._SubParsersAction)
                   for c in a.choices]
        words = " ".join([*subs, *options, *map(str, choices)])
        cases.append(f'        "{prefix}") words="{words}" ;;')
        for name, sub in subs.items():
            walk(f"{prefix} {name}".strip(), sub)

    walk("", parser)
    body = "\n".join(cases)
    return f"""# servekit bash completion: eval "$(servekit completion bash)" (or save it under
# /etc/bash_completion.d/servekit)
_servekit() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} path="" w words
    for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$w" in -*) continue ;; esac
        case " $(_servekit_words "${{path# }}") " in *" $w "*) path="$path $w" ;; esac
    done
    COMPREPLY=($(compgen -W "$(_servekit_words "${{path# }}")" -- "$cur"))
}}
_servekit_words() {{
    local words=""
    case "$1" in
{body}
    esac
    echo "$words"
}}
complete -o default -F _servekit servekit
"""
