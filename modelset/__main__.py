from modelset.cli import main

raise SystemExit(main())
