"""Patient identity: when two records are one person, collisions, and the decisions an operator makes."""
