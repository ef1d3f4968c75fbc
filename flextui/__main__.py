from flextui.cli import main

raise SystemExit(main())
