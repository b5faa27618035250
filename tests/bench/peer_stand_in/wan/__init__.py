raise ImportError("the harness imports single modules, never the packages (their __init__ pulls in the whole repository)")
