"""Great Expectations suites, one JSON file per dataset; shipped inside the package as data."""
