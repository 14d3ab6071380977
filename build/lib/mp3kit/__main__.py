from mp3kit.cli import main

raise SystemExit(main())
