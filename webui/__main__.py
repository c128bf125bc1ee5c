"""``python -m webui [--host H] [--port P] [--base-model DIR]``."""

from webui.app import main

if __name__ == "__main__":
    raise SystemExit(main())
