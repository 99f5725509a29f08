from llama_tui.cli import main

raise SystemExit(main())
