"""Operations: status, retention and purge, disk use, start-up recovery, retry, logs, the demo sender."""
