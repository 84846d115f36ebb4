"""``python -m medcyclegan`` runs the command-line interface."""

from __future__ import annotations

from medcyclegan.cli import main

if __name__ == "__main__":
    main()
