"""The small bench scripts check their arguments before any work, with one line and exit 2 (bench/report.py's
size_or_exit and check_json_out_or_exit)."""

import pytest

from histream_engine.bench import checkpoint_cost, decoder_state


@pytest.mark.parametrize("main, argv, message", [
    (checkpoint_cost.main, ["--size", "65x64"], "--size '65x64' is not WxH with multiples of 16"),
    (checkpoint_cost.main, ["--size", "0x64"], "--size '0x64' is not WxH with multiples of 16"),
    (checkpoint_cost.main, ["--out", "x.txt"], "--out x.txt must end in .json"),
    (decoder_state.main, ["--resolution", "64xa"], "--resolution '64xa' is not WxH with multiples of 8"),
    (decoder_state.main, ["--out", "x.csv"], "--out x.csv must end in .json"),
])
def test_a_bad_argument_exits_2_with_one_line_before_any_work(main, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and message in err, err


def test_a_record_names_its_command_with_the_arguments_given_or_the_process_own(monkeypatch):
    from histream_engine.bench.report import command_line

    assert command_line("python -m bench.vae", ["--repeats", "2"]) == "python -m bench.vae --repeats 2"
    assert command_line("histream bench", []) == "histream bench"
    monkeypatch.setattr("sys.argv", ["bench", "--preset", "cpu-small"])
    assert command_line("histream bench", None) == "histream bench --preset cpu-small"
