package rabbit

// SetHandOverBeforeAck makes f run in every hand-over of c before it
// sends its first acknowledgement, for the tests of package rabbit_test.
// Call it before c subscribes.
func SetHandOverBeforeAck(c *Conn, f func(queue string)) { c.handOverBeforeAck = f }
