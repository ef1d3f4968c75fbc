import pytest

from flextui.hostfile import HostfileError, parse_hostfile, read_hostfile, select_slots

# node1 is deliberately listed after node3 so ordering bugs show up.
CLUSTER = {"node3": 2, "node1": 4, "node2": 4}


def assert_one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.strip() == message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# --- parse_hostfile -------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("node1 slots=4\n", {"node1": 4}),
        ("node1 slots=4", {"node1": 4}),
        ("node2 slots=1\nnode1 slots=8\n", {"node2": 1, "node1": 8}),
        ("# cluster\n\nnode1 slots=2\n   \n# end\n", {"node1": 2}),
        ("  node1   slots=2  \n\tnode2\tslots=3\n", {"node1": 2, "node2": 3}),
        ("node1 slots=2 # spare box\n", {"node1": 2}),
        ("node1 slots=2# no space needed\n", {"node1": 2}),
        ("    # indented comment\nnode1 slots=2\n", {"node1": 2}),
        ("node1 slots=2\r\nnode2 slots=2\r\n", {"node1": 2, "node2": 2}),
        ("node1 slots=08\n", {"node1": 8}),
        ("10.0.0.1 slots=4\nworker-0.example.com slots=1\n", {"10.0.0.1": 4, "worker-0.example.com": 1}),
    ],
)
def test_parse_valid(text, expected):
    hosts = parse_hostfile(text)
    assert hosts == expected
    assert list(hosts) == list(expected)


def test_parse_keeps_hostfile_order():
    text = "".join(f"h{i} slots=1\n" for i in (5, 3, 9, 1, 7))
    assert list(parse_hostfile(text)) == ["h5", "h3", "h9", "h1", "h7"]


@pytest.mark.parametrize(
    "line",
    [
        "node1 slot=2",
        "node1",
        "node1 slots=",
        "node1 slots=two",
        "node1 slots=2.5",
        "node1 slots=2 extra",
        "node1 node2 slots=2",
        "node1 slots = 2",
        "node1 SLOTS=2",
        "slots=2 node1",
        "node1 slots=2=3",
        "node1 max_slots=2",
        "node1 slots=0x2",
    ],
)
def test_parse_malformed_line(line):
    text = f"# header\nnode0 slots=1\n{line}\n"
    with pytest.raises(HostfileError) as excinfo:
        parse_hostfile(text, "hostfile.txt")
    assert_one_line_error(excinfo, "hostfile.txt:3:", "malformed line", repr(line), "HOST slots=N")


def test_parse_malformed_message_matches_documented_example():
    with pytest.raises(HostfileError) as excinfo:
        parse_hostfile("node0 slots=1\n\nnode1 slot=2\n", "hostfile.txt")
    assert str(excinfo.value) == (
        "hostfile.txt:3: malformed line 'node1 slot=2' (expected 'HOST slots=N')"
    )


@pytest.mark.parametrize("slots", ["0", "-1", "-00", "+0"])
def test_parse_slots_below_one(slots):
    with pytest.raises(HostfileError) as excinfo:
        parse_hostfile(f"node1 slots={slots}\n", "hf")
    assert_one_line_error(excinfo, "hf:1:", "at least 1", f"node1 slots={slots}")


@pytest.mark.parametrize("slots", ["4097", "99999999999999999999999", "9" * 5000],
                         ids=["4097", "10**23", "5000 digits"])
def test_parse_slots_above_the_limit(slots):
    with pytest.raises(HostfileError) as excinfo:
        parse_hostfile(f"node0 slots=4096\nnode1 slots={slots}\n", "hf")
    assert_one_line_error(excinfo, "hf:2:", "at most 4096", f"node1 slots={slots}")


def test_parse_duplicate_host():
    text = "node1 slots=2\nnode2 slots=2\n# comment\nnode1 slots=4\n"
    with pytest.raises(HostfileError) as excinfo:
        parse_hostfile(text, "hostfile.txt")
    assert str(excinfo.value) == "hostfile.txt:4: duplicate host 'node1' (first on line 1)"


@pytest.mark.parametrize("host", ["user@node1", "node1:22", "node1,node2", "fe80::1"])
def test_parse_rejects_host_names_the_filter_grammar_cannot_name(host):
    with pytest.raises(HostfileError) as excinfo:
        parse_hostfile(f"{host} slots=1\n", "hf")
    assert_one_line_error(excinfo, "hf:1:", "invalid host name", repr(host))


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "   \n# a\n  # b\n"])
def test_parse_no_hosts(text):
    with pytest.raises(HostfileError) as excinfo:
        parse_hostfile(text, "hostfile.txt")
    assert str(excinfo.value) == "hostfile.txt: no hosts"


def test_parse_default_source_name():
    with pytest.raises(HostfileError) as excinfo:
        parse_hostfile("bogus\n")
    assert str(excinfo.value).startswith("<hostfile>:1:")


@pytest.mark.parametrize("separator", ["\x0b", "\x0c", "\x1c", "\x85", "\u2028"])
def test_parse_line_numbers_count_only_real_newlines(separator):
    text = f"# a{separator}comment\nnode1 slots=2{separator}x\n"
    with pytest.raises(HostfileError) as excinfo:
        parse_hostfile(text, "hf")
    assert_one_line_error(excinfo, "hf:2:", "malformed line", repr(f"node1 slots=2{separator}x"))


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_parse_line_numbers_with_any_newline_convention(newline):
    text = newline.join(["node1 slots=1", "", "bad"]) + newline
    with pytest.raises(HostfileError) as excinfo:
        parse_hostfile(text, "hf")
    assert str(excinfo.value).startswith("hf:3: malformed line 'bad'")


# --- read_hostfile ---------------------------------------------------------


def test_read_hostfile(tmp_path):
    path = tmp_path / "hostfile"
    path.write_text("# cluster\nnode2 slots=4\nnode1 slots=2  # old\n", encoding="utf-8")
    hosts = read_hostfile(path)
    assert hosts == {"node2": 4, "node1": 2}
    assert list(hosts) == ["node2", "node1"]
    assert read_hostfile(str(path)) == hosts


def test_read_hostfile_strips_utf8_bom(tmp_path):
    path = tmp_path / "hostfile"
    path.write_bytes(b"\xef\xbb\xbfnode1 slots=2\n")
    assert read_hostfile(path) == {"node1": 2}


def test_read_hostfile_errors_name_the_path(tmp_path):
    path = tmp_path / "hostfile"
    path.write_text("node1 slots=2\nnode1 slots=2\n", encoding="utf-8")
    with pytest.raises(HostfileError) as excinfo:
        read_hostfile(path)
    assert str(excinfo.value) == f"{path}:2: duplicate host 'node1' (first on line 1)"


def test_read_hostfile_missing(tmp_path):
    path = tmp_path / "nope" / "hostfile"
    with pytest.raises(HostfileError) as excinfo:
        read_hostfile(path)
    assert str(excinfo.value) == f"hostfile not found: {path}"


def test_read_hostfile_directory(tmp_path):
    with pytest.raises(HostfileError) as excinfo:
        read_hostfile(tmp_path)
    assert_one_line_error(excinfo, "cannot read hostfile", str(tmp_path))


def test_read_hostfile_unreadable(tmp_path, monkeypatch):
    # chmod 0 proves nothing when the suite runs as root, so fake the denial.
    path = tmp_path / "hostfile"
    path.write_text("node1 slots=2\n", encoding="utf-8")

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("flextui.hostfile.open", deny, raising=False)
    with pytest.raises(HostfileError) as excinfo:
        read_hostfile(path)
    assert str(excinfo.value) == f"cannot read hostfile {path}: Permission denied"


def test_read_hostfile_not_utf8(tmp_path):
    path = tmp_path / "hostfile"
    path.write_bytes(b"node\xff slots=2\n")
    with pytest.raises(HostfileError) as excinfo:
        read_hostfile(path)
    assert_one_line_error(excinfo, "cannot read hostfile", str(path), "UTF-8")


def test_read_hostfile_empty_file(tmp_path):
    path = tmp_path / "hostfile"
    path.write_text("# nothing yet\n", encoding="utf-8")
    with pytest.raises(HostfileError) as excinfo:
        read_hostfile(path)
    assert str(excinfo.value) == f"{path}: no hosts"


# --- select_slots: no filter -----------------------------------------------


def test_select_everything_by_default():
    selected = select_slots(CLUSTER)
    assert selected == {"node3": [0, 1], "node1": [0, 1, 2, 3], "node2": [0, 1, 2, 3]}
    assert list(selected) == ["node3", "node1", "node2"]


def test_select_does_not_mutate_input():
    hosts = dict(CLUSTER)
    select_slots(hosts, exclude="node1")
    select_slots(hosts, num_nodes=1, num_gpus=1)
    assert hosts == CLUSTER


# --- select_slots: --include -----------------------------------------------

HOSTS_12 = {"node1": 4, "node2": 4}


@pytest.mark.parametrize(
    "spec, expected",
    [
        # The DeepSpeed documentation's examples.
        ("node1@node2:0,2", {"node1": [0, 1, 2, 3], "node2": [0, 2]}),
        ("node2:0,1", {"node2": [0, 1]}),
        ("node1", {"node1": [0, 1, 2, 3]}),
        # Slots are sorted and deduplicated.
        ("node1:3,1,1,0", {"node1": [0, 1, 3]}),
        # Repeating a host merges its slots.
        ("node1:0@node1:2", {"node1": [0, 2]}),
        ("node1:0@node1", {"node1": [0, 1, 2, 3]}),
        ("node1@node1:1", {"node1": [0, 1, 2, 3]}),
        # Leading zeros are still integers.
        ("node1:01", {"node1": [1]}),
        # Hostfile order wins over spec order.
        ("node2:3@node1:1", {"node1": [1], "node2": [3]}),
    ],
)
def test_include(spec, expected):
    selected = select_slots(HOSTS_12, include=spec)
    assert selected == expected
    assert list(selected) == list(expected)


def test_include_bare_host_is_not_dropped():
    # DeepSpeed's own code silently ignores bare hosts in --include.
    assert select_slots(CLUSTER, include="node3@node1:0") == {"node3": [0, 1], "node1": [0]}


def test_include_keeps_hostfile_order():
    selected = select_slots(CLUSTER, include="node2@node1@node3:1")
    assert list(selected) == ["node3", "node1", "node2"]


# --- select_slots: --exclude -----------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("node1:1", {"node3": [0, 1], "node1": [0, 2, 3], "node2": [0, 1, 2, 3]}),
        ("node1", {"node3": [0, 1], "node2": [0, 1, 2, 3]}),
        ("node1@node2:0,2", {"node3": [0, 1], "node2": [1, 3]}),
        ("node3:0,1", {"node1": [0, 1, 2, 3], "node2": [0, 1, 2, 3]}),
        ("node3:0@node3:1@node2:3", {"node1": [0, 1, 2, 3], "node2": [0, 1, 2]}),
        ("node1:1,1,1", {"node3": [0, 1], "node1": [0, 2, 3], "node2": [0, 1, 2, 3]}),
        ("node2@node2:0", {"node3": [0, 1], "node1": [0, 1, 2, 3]}),
    ],
)
def test_exclude(spec, expected):
    selected = select_slots(CLUSTER, exclude=spec)
    assert selected == expected
    assert list(selected) == list(expected)


@pytest.mark.parametrize("spec", ["node3@node1@node2", "node3:0,1@node1@node2:0,1,2,3"])
def test_exclude_everything(spec):
    with pytest.raises(HostfileError) as excinfo:
        select_slots(CLUSTER, exclude=spec)
    assert str(excinfo.value) == f"no slots left after --exclude {spec!r}"


# --- select_slots: filter errors -------------------------------------------


@pytest.mark.parametrize("flag", ["include", "exclude"])
@pytest.mark.parametrize(
    "spec, fragments",
    [
        ("node9", ["unknown host 'node9'"]),
        ("node1@node9:0", ["unknown host 'node9'"]),
        ("NODE1", ["unknown host 'NODE1'"]),
        ("node1 ", ["unknown host 'node1 '"]),
        ("node3:2", ["slot 2 out of range", "'node3'", "0..1"]),
        ("node1:0,4", ["slot 4 out of range", "'node1'", "0..3"]),
        ("node1:99999999999999999999", ["out of range", "'node1'"]),
        ("node1:", ["empty slot list", "'node1:'"]),
        ("node1:0,", ["empty slot id", "'node1:0,'"]),
        ("node1:,0", ["empty slot id"]),
        ("node1:0,,1", ["empty slot id"]),
        ("node1:1:2", ["malformed entry", "'node1:1:2'"]),
        ("node1::1", ["malformed entry", "'node1::1'"]),
        ("@node1", ["leading '@'"]),
        ("node1@", ["trailing '@'"]),
        ("@", ["leading '@'"]),
        ("node1@@node2", ["empty entry"]),
        (":0", ["missing host name", "':0'"]),
        ("node1:x", ["not an integer", "'x'"]),
        ("node1:1.5", ["not an integer", "'1.5'"]),
        ("node1: 1", ["not an integer", "' 1'"]),
        ("node1:+1", ["not an integer", "'+1'"]),
        ("node1:1_0", ["not an integer", "'1_0'"]),
        ("node1:-1", ["negative slot -1"]),
        ("node1:0,-2", ["negative slot -2"]),
    ],
)
def test_filter_errors(flag, spec, fragments):
    with pytest.raises(HostfileError) as excinfo:
        select_slots(CLUSTER, **{flag: spec})
    assert_one_line_error(excinfo, f"--{flag}", repr(spec), *fragments)


@pytest.mark.parametrize("flag", ["include", "exclude"])
def test_filter_empty_spec(flag):
    with pytest.raises(HostfileError) as excinfo:
        select_slots(CLUSTER, **{flag: ""})
    assert_one_line_error(excinfo, f"--{flag}", "empty spec")


@pytest.mark.parametrize("flag", ["include", "exclude"])
def test_filter_error_with_newline_in_spec_stays_one_line(flag):
    with pytest.raises(HostfileError) as excinfo:
        select_slots(CLUSTER, **{flag: "node1\nnode2"})
    assert_one_line_error(excinfo, f"--{flag}", "unknown host", r"'node1\nnode2'")


def test_out_of_range_message_for_single_slot_host():
    with pytest.raises(HostfileError) as excinfo:
        select_slots({"solo": 1}, include="solo:1")
    assert str(excinfo.value) == (
        "--include 'solo:1': slot 1 out of range for host 'solo' (it has 1 slot: 0..0)"
    )


# --- select_slots: incompatible options ------------------------------------


def test_include_and_exclude_are_mutually_exclusive():
    with pytest.raises(HostfileError) as excinfo:
        select_slots(CLUSTER, include="node1", exclude="node2")
    assert_one_line_error(excinfo, "--include", "--exclude", "mutually exclusive")


@pytest.mark.parametrize("flag", ["include", "exclude"])
@pytest.mark.parametrize(
    "counts, count_flag",
    [
        ({"num_nodes": 1}, "--num_nodes"),
        ({"num_gpus": 1}, "--num_gpus"),
        ({"num_nodes": 1, "num_gpus": 1}, "--num_"),
    ],
)
def test_filter_does_not_combine_with_counts(flag, counts, count_flag):
    with pytest.raises(HostfileError) as excinfo:
        select_slots(CLUSTER, **{flag: "node1"}, **counts)
    assert_one_line_error(excinfo, f"--{flag}", count_flag, "cannot be combined")


# --- select_slots: --num_nodes / --num_gpus ---------------------------------


@pytest.mark.parametrize(
    "counts, expected",
    [
        ({"num_nodes": 1}, {"node3": [0, 1]}),
        ({"num_nodes": 2}, {"node3": [0, 1], "node1": [0, 1, 2, 3]}),
        ({"num_nodes": 3}, {"node3": [0, 1], "node1": [0, 1, 2, 3], "node2": [0, 1, 2, 3]}),
        ({"num_gpus": 1}, {"node3": [0], "node1": [0], "node2": [0]}),
        ({"num_gpus": 2}, {"node3": [0, 1], "node1": [0, 1], "node2": [0, 1]}),
        ({"num_nodes": 2, "num_gpus": 1}, {"node3": [0], "node1": [0]}),
        # node3 only has 2 slots, but num_nodes drops it before num_gpus applies.
        ({"num_nodes": 1, "num_gpus": 2}, {"node3": [0, 1]}),
    ],
)
def test_counts(counts, expected):
    selected = select_slots(CLUSTER, **counts)
    assert selected == expected
    assert list(selected) == list(expected)


def test_num_gpus_applies_only_to_the_first_num_nodes_hosts():
    hosts = {"big1": 8, "big2": 8, "small": 2}
    assert select_slots(hosts, num_nodes=2, num_gpus=8) == {
        "big1": list(range(8)),
        "big2": list(range(8)),
    }


@pytest.mark.parametrize(
    "counts, expected",
    [
        ({"num_nodes": 4}, "--num_nodes 4 but the hostfile has only 3 hosts"),
        ({"num_nodes": 0}, "--num_nodes must be at least 1, got 0"),
        ({"num_nodes": -1}, "--num_nodes must be at least 1, got -1"),
        ({"num_gpus": 3}, "--num_gpus 3 but host 'node3' has only 2 slots"),
        ({"num_gpus": 5}, "--num_gpus 5 but host 'node3' has only 2 slots"),
        ({"num_gpus": 0}, "--num_gpus must be at least 1, got 0"),
        ({"num_gpus": -2}, "--num_gpus must be at least 1, got -2"),
        ({"num_nodes": 9, "num_gpus": 1}, "--num_nodes 9 but the hostfile has only 3 hosts"),
    ],
)
def test_count_errors(counts, expected):
    with pytest.raises(HostfileError) as excinfo:
        select_slots(CLUSTER, **counts)
    assert str(excinfo.value) == expected


def test_count_errors_use_singular_nouns():
    with pytest.raises(HostfileError) as excinfo:
        select_slots({"solo": 1}, num_nodes=2)
    assert str(excinfo.value) == "--num_nodes 2 but the hostfile has only 1 host"
    with pytest.raises(HostfileError) as excinfo:
        select_slots({"solo": 1}, num_gpus=2)
    assert str(excinfo.value) == "--num_gpus 2 but host 'solo' has only 1 slot"


def test_num_gpus_error_names_the_first_short_host():
    hosts = {"big": 8, "small": 2, "tiny": 1}
    with pytest.raises(HostfileError) as excinfo:
        select_slots(hosts, num_gpus=4)
    assert "'small'" in str(excinfo.value)


def test_hostfile_error_is_a_value_error():
    assert issubclass(HostfileError, ValueError)


def test_end_to_end_from_file(tmp_path):
    path = tmp_path / "hostfile"
    path.write_text("worker-1 slots=4\nworker-0 slots=4\n", encoding="utf-8")
    hosts = read_hostfile(path)
    assert select_slots(hosts, include="worker-0@worker-1:0,2") == {
        "worker-1": [0, 2],
        "worker-0": [0, 1, 2, 3],
    }
