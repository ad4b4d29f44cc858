"""Run-wide hooks: the slow tests first, and the reliability figures table, gathered from
every test's report so that it is complete when pytest-xdist runs the tests in worker
processes."""

FIGURES: list = []
FIGURE = "reliability-figure"


def pytest_collection_modifyitems(items):
    """The long rounds (marked slow) start first: on parallel workers they then overlap
    with the many short tests instead of running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable


def pytest_runtest_logreport(report):
    if report.when != "teardown":  # the teardown report carries everything the test recorded
        return
    for name, value in report.user_properties:
        if name == FIGURE:
            FIGURES.append(tuple(value))


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    width = max(len(f"{s}: {f}") for s, f, _ in FIGURES)
    first = {}
    for i, (suite, _, _) in enumerate(FIGURES):
        first.setdefault(suite, i)
    for suite, figure, value in sorted(FIGURES, key=lambda f: first[f[0]]):
        terminalreporter.write_line(f"{f'{suite}: {figure}'.ljust(width)}  {value}")
