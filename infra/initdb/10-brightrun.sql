-- The registry lives beside Prefect's database in the same server.
CREATE DATABASE brightrun;
