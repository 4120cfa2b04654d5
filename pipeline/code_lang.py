"""Programming language of a code document, named as the ratio table names its 44 code languages.

The input's own label wins when it has one (sources label code in many spellings: ``cpp``, ``c++``,
``C++``); otherwise the file extension (or a well-known file name) of the document's path decides.
Anything outside the table is ``other`` so the mixer can still count it.
"""
from __future__ import annotations

import functools
import posixpath
from typing import Optional

OTHER = "other"

# Extra spellings seen in datasets (GitHub linguist, The Stack, file-type tags); each table name also
# matches itself case-insensitively, and with spaces/dashes/underscores removed.
_ALIASES = {
    "C++": ("cpp", "cxx", "c plus plus", "cplusplus"),
    "C#": ("csharp", "cs", "c sharp"),
    "F#": ("fsharp", "fs", "f sharp"),
    "JavaScript": ("js", "node", "nodejs", "jsx", "ecmascript", "mjs"),
    "TypeScript": ("ts", "tsx"),
    "Python": ("py", "python3", "python2", "py3"),
    "Shell": ("sh", "bash", "zsh", "ksh", "dash", "shell script", "shellscript"),
    "PowerShell": ("ps1", "pwsh", "posh"),
    "Go": ("golang",),
    "Rust": ("rs",),
    "Ruby": ("rb",),
    "Kotlin": ("kt", "kts"),
    "Perl": ("pl", "perl5"),
    "Haskell": ("hs",),
    "Common Lisp": ("lisp", "cl", "commonlisp"),
    "Emacs Lisp": ("elisp", "el", "emacs-lisp"),
    "Visual Basic": ("vb", "vbnet", "vb.net", "visual basic .net", "vba", "vbscript"),
    "OCaml": ("ml",),
    "FORTRAN": ("f90", "f77", "fortran77", "fortran90"),
    "Assembly": ("asm", "nasm", "gas", "assembler"),
    "Objective-C++": ("objc++", "objcpp", "objective c++"),
    "Cuda": ("cu",),
    "Verilog": ("systemverilog", "sv"),
    "SQL": ("plsql", "tsql", "mysql", "postgresql", "sqlite", "plpgsql"),
    "Pascal": ("delphi", "objectpascal", "freepascal"),
    "Groovy": ("gradle",),
    "Elixir": ("ex", "exs"),
    "Erlang": ("erl",),
    "Clojure": ("clj", "cljs", "clojurescript"),
    "Arduino": ("ino",),
    "COBOL": ("cob", "cbl"),
    "R": ("rscript", "rmd"),
    "Julia": ("jl",),
}

_EXTENSIONS = {
    "PHP": ".php .phtml .php3 .php4 .php5 .php7 .phps",
    "JavaScript": ".js .mjs .cjs .jsx",
    "Java": ".java",
    "Python": ".py .pyw .pyi .pyx",
    "TypeScript": ".ts .tsx .mts .cts",
    "C": ".c .h",
    "C++": ".cc .cpp .cxx .c++ .hpp .hh .hxx .h++ .ipp .tcc .inl",
    "C#": ".cs .csx",
    "Go": ".go",
    "Rust": ".rs",
    "Ruby": ".rb .rake .gemspec .ru",
    "Swift": ".swift",
    "Kotlin": ".kt .kts",
    "Scala": ".scala .sc",
    "Dart": ".dart",
    "SQL": ".sql .psql .pgsql",
    "Shell": ".sh .bash .zsh .ksh",
    "Haskell": ".hs .lhs",
    "Common Lisp": ".lisp .lsp .asd",
    "Perl": ".pl .pm .pod .t",
    "CSS": ".css",
    "Julia": ".jl",
    "Visual Basic": ".vb .bas .vbs .frm",
    "OCaml": ".ml .mli",
    "PowerShell": ".ps1 .psm1 .psd1",
    "Groovy": ".groovy .gradle .gvy",
    "Pascal": ".pas .dpr .lpr .pp",
    "FORTRAN": ".f .for .ftn .f77 .f90 .f95 .f03 .f08",
    "Elixir": ".ex .exs",
    "Solidity": ".sol",
    "F#": ".fs .fsi .fsx",
    "Erlang": ".erl .hrl",
    "Arduino": ".ino .pde",
    "Assembly": ".asm .s .nasm",
    "Clojure": ".clj .cljs .cljc .edn",
    "Cuda": ".cu .cuh",
    "VHDL": ".vhd .vhdl",
    "Emacs Lisp": ".el",
    "Objective-C++": ".mm",
    "Crystal": ".cr",
    "R": ".r .rmd",
    "ABAP": ".abap",
    "COBOL": ".cob .cbl .cpy",
    "Verilog": ".v .sv .svh .vh",
}

_FILENAMES = {
    "Rakefile": "Ruby", "Gemfile": "Ruby", "Vagrantfile": "Ruby",
    "Jenkinsfile": "Groovy", ".bashrc": "Shell", ".bash_profile": "Shell", ".zshrc": "Shell",
    ".emacs": "Emacs Lisp",
}


def _squash(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in " -_")


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[tuple[str, ...], dict[str, str], dict[str, str]]:
    from mixing.ratios import load_ratios

    names = tuple(load_ratios().code_languages)
    unknown = (set(_ALIASES) | set(_EXTENSIONS) | set(_FILENAMES.values())) - set(names)
    assert not unknown, f"code_lang tables name languages outside the ratio table: {sorted(unknown)}"
    by_name = {}
    for name in names:
        by_name[name.lower()] = by_name[_squash(name)] = name
    for name, aliases in _ALIASES.items():
        for alias in aliases:
            by_name[alias] = by_name[_squash(alias)] = name
    by_ext = {ext: name for name, exts in _EXTENSIONS.items() for ext in exts.split()}
    return names, by_name, by_ext


def code_languages() -> tuple[str, ...]:
    """The 44 programming languages of the shipped ratio table."""
    return _tables()[0]


def normalize_name(name: str) -> str:
    """A code-language label in any common spelling -> the ratio table's name, else ``other``."""
    _, by_name, _ = _tables()
    key = name.strip().lower()
    return by_name.get(key) or by_name.get(_squash(key)) or OTHER


def from_path(path: str) -> str:
    """Language from a file name: well-known names (``Rakefile``), then the extension."""
    _, _, by_ext = _tables()
    base = posixpath.basename(path.replace("\\", "/").strip())
    if base in _FILENAMES:
        return _FILENAMES[base]
    ext = posixpath.splitext(base)[1].lower()
    return by_ext.get(ext, OTHER)


def detect(code_lang: Optional[str] = None, path: Optional[str] = None) -> str:
    """The input's label if it has a usable one, else the path's extension, else ``other``."""
    if code_lang and code_lang.strip():
        named = normalize_name(code_lang)
        if named != OTHER or not path:
            return named
    return from_path(path) if path else OTHER
