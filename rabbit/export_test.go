package rabbit

// SetHandOverBeforeAck makes f run in every hand-over of c before each
// acknowledgement it sends, for the tests of package rabbit_test.
// Call it before c subscribes.
func SetHandOverBeforeAck(c *Conn, f func(queue string)) { c.handOverBeforeAck = f }
