-- Ends the transaction block transaction-begin opened, undoing everything in it.
ROLLBACK;
