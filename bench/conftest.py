def pytest_terminal_summary(terminalreporter):
    from attention_report import terminal_summary  # bench/ is on sys.path (rootdir-relative conftest)

    terminal_summary(terminalreporter)
