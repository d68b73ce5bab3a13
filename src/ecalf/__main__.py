from ecalf.cli import main

raise SystemExit(main())
