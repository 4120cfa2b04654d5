"""code_lang: every one of the ratio table's 44 languages is reachable by name and by extension."""
from __future__ import annotations

import pytest

from mixing.ratios import load_ratios
from pipeline import code_lang

TABLE = list(load_ratios().code_languages)

ONE_EXTENSION = {
    "PHP": "php", "JavaScript": "js", "Java": "java", "Python": "py", "TypeScript": "ts", "C": "c",
    "C++": "cpp", "C#": "cs", "Go": "go", "Rust": "rs", "Ruby": "rb", "Swift": "swift", "Kotlin": "kt",
    "Scala": "scala", "Dart": "dart", "SQL": "sql", "Shell": "sh", "Haskell": "hs", "Common Lisp": "lisp",
    "Perl": "pl", "CSS": "css", "Julia": "jl", "Visual Basic": "vb", "OCaml": "ml", "PowerShell": "ps1",
    "Groovy": "groovy", "Pascal": "pas", "FORTRAN": "f90", "Elixir": "ex", "Solidity": "sol", "F#": "fs",
    "Erlang": "erl", "Arduino": "ino", "Assembly": "asm", "Clojure": "clj", "Cuda": "cu", "VHDL": "vhd",
    "Emacs Lisp": "el", "Objective-C++": "mm", "Crystal": "cr", "R": "R", "ABAP": "abap", "COBOL": "cob",
    "Verilog": "v",
}


def test_table_has_44_languages_and_all_are_covered():
    assert len(TABLE) == 44
    assert code_lang.code_languages() == tuple(TABLE)
    assert set(ONE_EXTENSION) == set(TABLE)


@pytest.mark.parametrize("name", TABLE)
def test_every_language_by_extension_and_by_its_own_name(name):
    assert code_lang.from_path(f"src/deep/dir/file.{ONE_EXTENSION[name]}") == name
    assert code_lang.normalize_name(name) == name
    assert code_lang.normalize_name(name.upper()) == name


@pytest.mark.parametrize("alias,name", [
    ("cpp", "C++"), ("c++", "C++"), ("js", "JavaScript"), ("shell", "Shell"), ("bash", "Shell"),
    ("golang", "Go"), ("csharp", "C#"), ("objective-c++", "Objective-C++"), ("emacs-lisp", "Emacs Lisp"),
    ("elisp", "Emacs Lisp"), ("common_lisp", "Common Lisp"), ("systemverilog", "Verilog"),
    ("visual basic .net", "Visual Basic"), ("fortran", "FORTRAN"), (" Python3 ", "Python"), ("cuda", "Cuda"),
])
def test_aliases(alias, name):
    assert code_lang.normalize_name(alias) == name


@pytest.mark.parametrize("path,name", [
    ("a/b/kernel.cuh", "Cuda"), ("sketch.INO", "Arduino"), ("x/Token.sol", "Solidity"), ("rtl/top.sv", "Verilog"),
    ("init.el", "Emacs Lisp"), ("View.mm", "Objective-C++"), ("src/app.cr", "Crystal"), ("PAYROLL.CBL", "COBOL"),
    ("pkg/Rakefile", "Ruby"), ("lib/x.d.ts", "TypeScript"), ("include/x.hpp", "C++"), ("x.h", "C"),
    ("win\\script.ps1", "PowerShell"), ("README.md", "other"), ("Makefile", "other"), ("noext", "other"),
])
def test_paths(path, name):
    assert code_lang.from_path(path) == name


def test_detect_prefers_the_input_label_then_the_path_then_other():
    assert code_lang.detect("cpp", "file.py") == "C++"  # the input's own label wins
    assert code_lang.detect("Tcl", "file.py") == "Python"  # unusable label: the path decides
    assert code_lang.detect("Tcl", "file.tcl") == "other"
    assert code_lang.detect(None, "file.go") == "Go"
    assert code_lang.detect("  ", "file.go") == "Go"
    assert code_lang.detect(None, None) == "other"
    assert code_lang.detect("Brainfuck", None) == "other"
