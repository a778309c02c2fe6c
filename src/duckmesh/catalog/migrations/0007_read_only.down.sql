DROP TABLE IF EXISTS read_only_switch;
