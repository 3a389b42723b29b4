from clarion.cli import main

raise SystemExit(main())
