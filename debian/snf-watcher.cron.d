# The snf-watcher pass: restart crashed VMs their owners want running and
# reconcile Synnefo's database with Ganeti. Every node with the package runs
# it; it acts only on the master. Keep the interval equal to watcher.interval
# in /etc/synnefo/snf-watcher.yaml. The report goes to syslog (or the logging
# target set there); cron mails only what goes wrong before logging starts.
SHELL=/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin

*/5 * * * * root [ -x /usr/bin/snf-watcher ] && /usr/bin/snf-watcher >/dev/null
