import sys

from bench.runner import main

if sys.argv[1:2] == ["cluster"]:  # nodes on PostgreSQL + Redis: bench/cluster.py
    from bench.cluster import main
elif sys.argv[1:2] == ["soak"]:  # steady mixed load for N minutes: bench/soak.py
    from bench.soak import main
elif sys.argv[1:2] == ["retention"]:  # relay p99 while pruning: bench/retention.py
    from bench.retention import main
elif sys.argv[1:2] == ["storm"]:  # restart, all reconnect at once: bench/storm.py
    from bench.storm import main

sys.exit(main())
