from ragkit.cli import main; raise SystemExit(main())
