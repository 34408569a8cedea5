from fashionsd_x.cli import main

raise SystemExit(main())
