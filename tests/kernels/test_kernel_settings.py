"""The C kernels' settings: the compiler ($CC, or none on PATH) and ``LOCALMAMBA_CPU_KERNEL``, as the summary
reports them and as a tool checks them before it starts."""
import pytest

from localmamba_conv1d import cpu_conv1d
from localmamba_kernel_runtime import ckernel, settings


def test_summary_says_when_no_compiler_was_found(fresh_kernels, monkeypatch, tmp_path, caplog):
    """With no C compiler on PATH the summary said 'pytorch (avx512 build failed)', though nothing was built."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with caplog.at_level("WARNING", logger="localmamba"):
        assert cpu_conv1d.load_kernel() is None
    assert "no C compiler found" in caplog.text
    assert ckernel.isa_summary() == "pytorch (no C compiler found)"


def test_an_unusable_cc_is_refused(fresh_kernels, monkeypatch):
    """CC=/nonexistent/cc silently built with the system cc; like a bad LOCALMAMBA_CPU_ISA, it is now refused in one
    line, by the settings check a tool runs before it starts and at the first kernel build."""
    monkeypatch.setenv("CC", "/nonexistent/cc")
    message = (r"^CC='/nonexistent/cc' is not an executable C compiler \(a name on PATH or a path\); "
               r"point it at one, or unset it to use cc, gcc or clang$")
    with pytest.raises(ckernel.KernelSettingError, match=message):
        ckernel.compiler()
    with pytest.raises(settings.SETTING_ERRORS, match=message):
        settings.check_settings("cpu")
    with pytest.raises(ckernel.KernelSettingError, match=message):
        cpu_conv1d.load_kernel()
    monkeypatch.setenv("CC", " ")
    assert ckernel.compiler() in (None, *((ckernel.shutil.which(name),) for name in ("cc", "gcc", "clang")))


@pytest.mark.skipif(ckernel.compiler() is None, reason="no C compiler on this machine")
def test_a_cc_of_several_words_is_a_command(fresh_kernels, monkeypatch, tmp_path):
    """CC='ccache gcc' (a launcher and its compiler) was silently replaced by the system cc: it is now run as the
    shell would run it, and the kernels build with it."""
    cc = ckernel.compiler()[0]
    launcher = tmp_path / "launcher"
    launcher.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\nexec "$@"\n')
    launcher.chmod(0o755)
    monkeypatch.setenv("CC", f"{launcher} {cc}")
    assert ckernel.compiler() == (str(launcher), cc)
    assert cpu_conv1d.load_kernel() is not None
    assert f"{cc} -" in (tmp_path / "calls").read_text()     # the compiler ran through the launcher


@pytest.mark.parametrize("value, enabled", [("", True), ("1", True), (" TRUE ", True), ("on", True), ("yes", True),
                                            ("require", True), ("0", False), ("False", False), ("off", False),
                                            ("NO", False)])
def test_cpu_kernel_switch_accepts_the_usual_spellings(fresh_kernels, monkeypatch, value, enabled):
    monkeypatch.setenv(ckernel.DISABLE_VAR, value)
    assert ckernel.kernels_enabled() is enabled


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_cpu_kernel_switch_refuses_other_values(fresh_kernels, monkeypatch, device):
    """LOCALMAMBA_CPU_KERNEL=2 used to leave the kernels on without a word; the message lists every spelling,
    require (strict: a kernel that does not build raises) among them."""
    monkeypatch.setenv(ckernel.DISABLE_VAR, "2")
    message = (r"^LOCALMAMBA_CPU_KERNEL='2' is not a valid value; valid values are: 1, true, on, yes \(the C kernels "
               r"on\), require \(on, and a kernel that does not build raises an error\), 0, false, off, no \(off\)$")
    with pytest.raises(ckernel.KernelSettingError, match=message):
        ckernel.kernels_enabled()
    with pytest.raises(settings.SETTING_ERRORS, match=message):
        settings.check_settings(device)
